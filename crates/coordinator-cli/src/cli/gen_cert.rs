//! `coordinator gen-cert`: a self-signed certificate and key for the Native
//! carrier (what the seed documents did with an openssl command).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

pub fn run(cert: &Path, key: &Path, names: &[String], force: bool) -> ExitCode {
    match write(cert, key, names, force) {
        Ok(()) => {
            println!(
                "wrote {} and {} (valid for {}); set them as certPath and keyPath",
                cert.display(),
                key.display(),
                names.join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn write(cert: &Path, key: &Path, names: &[String], force: bool) -> anyhow::Result<()> {
    let (cert_pem, key_pem) = coordinator_native::tls::self_signed_pem(names.to_vec())?;
    create(cert, cert_pem.as_bytes(), force, 0o644)?;
    create(key, key_pem.as_bytes(), force, 0o600)?;
    Ok(())
}

fn create(path: &Path, contents: &[u8], force: bool, mode: u32) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|error| {
        if error.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!("{} exists; pass --force to replace it", path.display())
        } else {
            anyhow::anyhow!("cannot write {}: {error}", path.display())
        }
    })?;
    file.write_all(contents)?;
    Ok(())
}
