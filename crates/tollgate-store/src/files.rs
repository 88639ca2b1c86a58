//! Owner-only folders and files: `data_dir` holds the database, the key files and the email
//! outbox, so everything writing there creates them readable by the owner only, and reports
//! wider existing ones.

/// Creates `dir` and its missing parents readable by the owner only (mode 0700 on Unix):
/// `data_dir` holds the database, the key files and the email outbox.
pub fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

/// Creates `path` empty with mode 0600 unless it exists (an existing file is left untouched).
pub fn create_private_file(path: &std::path::Path) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// The permission bits of `path` when it exists and grants more than `max` (e.g. `0o600`).
pub fn mode_wider_than(path: &std::path::Path, max: u32) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & !max != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = (path, max);
        None
    }
}

/// Logs a warning when `path` exists and grants more than `max`; returns whether it did.
pub fn warn_if_wider(path: &std::path::Path, max: u32) -> bool {
    match mode_wider_than(path, max) {
        Some(mode) => {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{mode:04o}"),
                expected = format_args!("{max:04o}"),
                "readable by other local users (it holds password and key hashes or secrets); \
                 restrict it, e.g. chmod {max:o}"
            );
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn private_paths_are_owner_only_and_wider_ones_are_reported() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a").join("b");
        create_private_dir(&dir).unwrap();
        for d in [tmp.path().join("a"), dir.clone()] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{}: {mode:o}", d.display());
        }
        let f = dir.join("f");
        create_private_file(&f).unwrap();
        assert_eq!(mode_wider_than(&f, 0o600), None);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        create_private_file(&f).unwrap(); // an existing file is left as it is
        assert_eq!(mode_wider_than(&f, 0o600), Some(0o644));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(mode_wider_than(&dir, 0o700), Some(0o755));
        assert_eq!(mode_wider_than(&dir.join("missing"), 0o600), None);
        // The warning names the path and both modes.
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Writer(sink.clone()))
            .finish();
        let warned = tracing::subscriber::with_default(sub, || warn_if_wider(&f, 0o600));
        assert!(warned);
        let out = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert!(
            out.contains("WARN") && out.contains("0644") && out.contains("0600"),
            "{out}"
        );
        assert!(out.contains(&f.display().to_string()), "{out}");
    }

    #[cfg(unix)]
    struct Writer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    #[cfg(unix)]
    impl std::io::Write for Writer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
