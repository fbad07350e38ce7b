//! Tests of the build context: `.dockerignore` applied, sources resolved, hashed and copied
//! into a root with Docker's rules. They run as root, so ownership is checked.

use super::*;
use std::os::unix::fs::{PermissionsExt, symlink};

fn write(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

fn chmod(root: &Path, rel: &str, mode: u32) {
    fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).unwrap();
}

/// The options ADD copies with.
fn add() -> CopyOptions {
    CopyOptions {
        unpack_archives: true,
        ..CopyOptions::default()
    }
}

fn set_mtime(path: &Path, secs: i64) {
    let t = nix::sys::time::TimeSpec::new(secs, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

fn context(files: &[(&str, &str)], ignore: &str) -> (tempfile::TempDir, Context) {
    let dir = tempfile::tempdir().unwrap();
    for (rel, content) in files {
        write(dir.path(), rel, content);
    }
    let ctx = Context::from_dir(dir.path(), &Matcher::parse(ignore).unwrap()).unwrap();
    (dir, ctx)
}

fn copy(ctx: &Context, sources: &[&str], dest: &str, opts: &CopyOptions) -> tempfile::TempDir {
    let image = tempfile::tempdir().unwrap();
    copy_to(ctx, sources, image.path(), dest, opts);
    image
}

fn copy_to(ctx: &Context, sources: &[&str], image: &Path, dest: &str, opts: &CopyOptions) {
    let tree = ctx.source_tree();
    let resolved = tree.resolve(sources).unwrap();
    copy_into(&tree, &resolved, image, dest, opts).unwrap();
}

fn read(root: &Path, rel: &str) -> String {
    fs::read_to_string(root.join(rel)).unwrap()
}

fn meta(root: &Path, rel: &str) -> fs::Metadata {
    fs::symlink_metadata(root.join(rel)).unwrap()
}

#[test]
fn dockerignore_excludes_files_and_exceptions_reinclude_below_excluded_dirs() {
    let (_dir, ctx) = context(
        &[
            ("a.txt", "a"),
            ("b.log", "b"),
            ("build/out", "o"),
            ("build/keep/this", "k"),
            ("node_modules/x/y", "y"),
        ],
        "*.log\nbuild\n!build/keep/this\nnode_modules\n",
    );
    assert!(ctx.is_included("a.txt"));
    assert!(!ctx.is_included("b.log"));
    assert!(!ctx.is_included("build/out"));
    assert!(ctx.is_included("build/keep/this"));
    assert!(ctx.is_included("build/keep"));
    assert!(ctx.is_included("build"));
    assert!(!ctx.is_included("node_modules"));
    assert!(!ctx.is_included("node_modules/x/y"));

    let image = copy(&ctx, &["build"], "/b/", &CopyOptions::default());
    assert_eq!(read(image.path(), "b/keep/this"), "k");
    assert!(!image.path().join("b/out").exists());
}

#[test]
fn missing_or_excluded_source_is_an_error_naming_it() {
    let (_dir, ctx) = context(&[("secret.key", "s")], "*.key\n");
    let tree = ctx.source_tree();
    for src in ["missing.txt", "secret.key"] {
        let err = tree.resolve(&[src]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "file not found in build context or excluded by .dockerignore: stat {src}: file does not exist"
            )
        );
    }
    let err = tree.resolve(&["*.none"]).unwrap_err();
    assert!(matches!(err, ContextError::NotInContext { .. }), "{err}");
}

#[test]
fn dotdot_and_absolute_sources_stay_inside_the_context() {
    let (dir, ctx) = context(&[("etc/passwd", "ctx")], "");
    let tree = ctx.source_tree();
    for src in ["../../etc/passwd", "/etc/passwd", "a/../../../etc/passwd"] {
        let r = tree.resolve(&[src]).unwrap();
        assert_eq!(r.sources[0].path, "etc/passwd", "{src}");
    }
    symlink("../../../../../../etc", dir.path().join("up")).unwrap();
    let ctx = Context::from_dir(dir.path(), &Matcher::new_empty()).unwrap();
    let image = copy(&ctx, &["up/passwd"], "/p", &CopyOptions::default());
    assert_eq!(read(image.path(), "p"), "ctx");
}

#[test]
fn symlink_source_is_followed_and_keeps_the_link_name() {
    let (dir, _) = context(&[("a.txt", "hi"), ("real/r.txt", "r")], "");
    symlink("a.txt", dir.path().join("link.txt")).unwrap();
    symlink("real", dir.path().join("linkdir")).unwrap();
    symlink("/a.txt", dir.path().join("abslink")).unwrap();
    symlink("nowhere", dir.path().join("dangling")).unwrap();
    let ctx = Context::from_dir(dir.path(), &Matcher::new_empty()).unwrap();
    let o = CopyOptions::default();

    let image = copy(&ctx, &["link.txt"], "/l1/", &o);
    assert_eq!(read(image.path(), "l1/link.txt"), "hi");
    assert!(meta(image.path(), "l1/link.txt").is_file());
    let image = copy(&ctx, &["linkdir"], "/ld/", &o);
    assert_eq!(read(image.path(), "ld/r.txt"), "r");
    let image = copy(&ctx, &["abslink"], "/al/", &o);
    assert_eq!(read(image.path(), "al/abslink"), "hi");
    assert!(ctx.source_tree().resolve(&["dangling"]).is_err());
}

#[test]
fn symlink_to_excluded_file_is_not_found() {
    let (dir, _) = context(&[("secret", "s")], "");
    symlink("secret", dir.path().join("link")).unwrap();
    let ctx = Context::from_dir(dir.path(), &Matcher::parse("secret").unwrap()).unwrap();
    assert!(ctx.source_tree().resolve(&["link"]).is_err());
}

#[test]
fn wildcards_match_per_component_and_several_matches_make_dest_a_directory() {
    let (_dir, ctx) = context(
        &[
            ("src/a.rs", "a"),
            ("src/b.rs", "b"),
            ("src/sub/c.rs", "c"),
            ("lib/d.rs", "d"),
            (".hidden.rs", "h"),
        ],
        "",
    );
    let tree = ctx.source_tree();
    let r = tree.resolve(&["*/*.rs"]).unwrap();
    let names: Vec<&str> = r.sources.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["lib/d.rs", "src/a.rs", "src/b.rs"]);
    assert!(r.dest_is_dir);
    assert!(!tree.resolve(&["src/a*"]).unwrap().dest_is_dir);
    // Go's filepath.Match lets `*` match a leading dot.
    let r = tree.resolve(&["*.rs"]).unwrap();
    assert_eq!(r.sources[0].name, ".hidden.rs");
    let r = tree.resolve(&["src/[ab].rs", "nomatch*"]).unwrap();
    assert_eq!(r.sources.len(), 2);

    // One match to a non-directory dest is that file; several make it a directory.
    let image = copy(&ctx, &["src/a*"], "/out", &CopyOptions::default());
    assert_eq!(read(image.path(), "out"), "a");
    let image = copy(&ctx, &["src/*.rs"], "/out", &CopyOptions::default());
    assert_eq!(read(image.path(), "out/b.rs"), "b");
    let image = copy(&ctx, &["src/a.rs"], "/app/.", &CopyOptions::default());
    assert_eq!(read(image.path(), "app/a.rs"), "a");
}

#[test]
fn copy_from_a_stage_ignores_dockerignore() {
    let (dir, _) = context(&[("x.log", "x")], "");
    let tree = SourceTree::stage(dir.path());
    let r = tree.resolve(&["/x.log"]).unwrap();
    let image = tempfile::tempdir().unwrap();
    copy_into(&tree, &r, image.path(), "/y", &CopyOptions::default()).unwrap();
    assert_eq!(read(image.path(), "y"), "x");
    let err = tree.resolve(&["missing"]).unwrap_err();
    assert!(matches!(err, ContextError::NotInStage { .. }));
}

#[test]
fn hash_ignores_mtime_owner_and_location_but_not_content_or_mode() {
    let files = [("a/b.txt", "b"), ("c.txt", "c"), ("skip.log", "1")];
    let (d1, c1) = context(&files, "*.log");
    let (d2, _) = context(&files, "*.log");
    set_mtime(&d2.path().join("a/b.txt"), 12345);
    nix::unistd::chown(
        &d2.path().join("c.txt"),
        Some(nix::unistd::Uid::from_raw(1000)),
        None,
    )
    .unwrap();
    write(d2.path(), "skip.log", "changed");
    let c2 = Context::from_dir(d2.path(), &Matcher::parse("*.log").unwrap()).unwrap();
    let hash = |ctx: &Context, srcs: &[&str]| {
        let t = ctx.source_tree();
        content_hash(&t, &t.resolve(srcs).unwrap()).unwrap()
    };
    assert_eq!(hash(&c1, &["."]), hash(&c2, &["."]));
    assert_eq!(hash(&c1, &["a", "c.txt"]), hash(&c2, &["a", "c.txt"]));
    assert_ne!(hash(&c1, &["a"]), hash(&c1, &["c.txt"]));

    write(d2.path(), "c.txt", "C");
    assert_ne!(hash(&c1, &["."]), hash(&c2, &["."]));
    write(d2.path(), "c.txt", "c");
    chmod(d2.path(), "c.txt", 0o755);
    assert_ne!(hash(&c1, &["."]), hash(&c2, &["."]));
    let _ = d1;
}

#[test]
fn file_source_becomes_dest_unless_dest_is_a_directory() {
    let (_dir, ctx) = context(&[("a.txt", "a"), ("b.txt", "b")], "");
    let o = CopyOptions::default();
    let image = copy(&ctx, &["a.txt"], "/x/y", &o);
    assert_eq!(read(image.path(), "x/y"), "a");
    let image = copy(&ctx, &["a.txt"], "/x/y/", &o);
    assert_eq!(read(image.path(), "x/y/a.txt"), "a");
    let image = copy(&ctx, &["a.txt", "b.txt"], "/m", &o);
    assert_eq!(read(image.path(), "m/b.txt"), "b");
    // An existing directory takes the file inside even without a trailing slash.
    let image = tempfile::tempdir().unwrap();
    fs::create_dir(image.path().join("d")).unwrap();
    copy_to(&ctx, &["a.txt"], image.path(), "/d", &o);
    assert_eq!(read(image.path(), "d/a.txt"), "a");
    // An existing file is replaced.
    copy_to(&ctx, &["b.txt"], image.path(), "/d/a.txt", &o);
    assert_eq!(read(image.path(), "d/a.txt"), "b");
}

#[test]
fn directory_source_copies_contents_with_modes_times_links_and_root_owner() {
    let (dir, _) = context(&[("d/sub/f", "f"), ("d/x.sh", "#!")], "");
    chmod(dir.path(), "d/sub/f", 0o600);
    chmod(dir.path(), "d/sub", 0o750);
    fs::hard_link(dir.path().join("d/sub/f"), dir.path().join("d/hard")).unwrap();
    symlink("sub/f", dir.path().join("d/rel")).unwrap();
    symlink("/etc/passwd", dir.path().join("d/abs")).unwrap();
    nix::unistd::chown(
        &dir.path().join("d/x.sh"),
        Some(nix::unistd::Uid::from_raw(1000)),
        Some(nix::unistd::Gid::from_raw(1000)),
    )
    .unwrap();
    // After the chown, which clears setuid.
    chmod(dir.path(), "d/x.sh", 0o4751);
    set_mtime(&dir.path().join("d/sub/f"), 1_000_000);
    set_mtime(&dir.path().join("d/sub"), 2_000_000);
    let ctx = Context::from_dir(dir.path(), &Matcher::new_empty()).unwrap();
    let image = copy(&ctx, &["d"], "/app", &CopyOptions::default());
    let r = image.path();

    assert_eq!(read(r, "app/sub/f"), "f");
    assert_eq!(meta(r, "app/sub/f").mode() & 0o7777, 0o600);
    assert_eq!(meta(r, "app/x.sh").mode() & 0o7777, 0o4751);
    assert_eq!(meta(r, "app/sub").mode() & 0o7777, 0o750);
    assert_eq!(meta(r, "app/sub/f").mtime(), 1_000_000);
    assert_eq!(meta(r, "app/sub").mtime(), 2_000_000);
    assert_eq!(
        (meta(r, "app/x.sh").uid(), meta(r, "app/x.sh").gid()),
        (0, 0)
    );
    assert_eq!(meta(r, "app/hard").ino(), meta(r, "app/sub/f").ino());
    assert_eq!(
        fs::read_link(r.join("app/rel")).unwrap(),
        Path::new("sub/f")
    );
    assert_eq!(
        fs::read_link(r.join("app/abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(meta(r, "app").mode() & 0o7777, 0o755);
}

#[test]
fn chown_owns_files_and_created_parents_and_chmod_skips_created_parents() {
    let (_dir, ctx) = context(&[("d/sub/f", "f"), ("a.txt", "a")], "");
    let opts = CopyOptions {
        chown: Some((1234, 55)),
        chmod: Some(Chmod::parse("640").unwrap()),
        ..CopyOptions::default()
    };
    let image = copy(&ctx, &["d"], "/deep/cm", &opts);
    let r = image.path();
    for rel in ["deep", "deep/cm", "deep/cm/sub", "deep/cm/sub/f"] {
        assert_eq!(
            (meta(r, rel).uid(), meta(r, rel).gid()),
            (1234, 55),
            "{rel}"
        );
    }
    assert_eq!(meta(r, "deep").mode() & 0o7777, 0o755);
    assert_eq!(meta(r, "deep/cm").mode() & 0o7777, 0o755);
    assert_eq!(meta(r, "deep/cm/sub").mode() & 0o7777, 0o640);
    assert_eq!(meta(r, "deep/cm/sub/f").mode() & 0o7777, 0o640);

    // Existing parents keep their owner.
    fs::create_dir(r.join("etc")).unwrap();
    copy_to(&ctx, &["a.txt"], r, "/etc/new/", &opts);
    assert_eq!(meta(r, "etc").uid(), 0);
    assert_eq!(meta(r, "etc/new").uid(), 1234);
}

#[test]
fn absolute_symlinks_in_the_image_resolve_inside_the_root() {
    let (_dir, ctx) = context(&[("payload", "p")], "");
    let image = tempfile::tempdir().unwrap();
    let r = image.path();
    fs::create_dir(r.join("etc")).unwrap();
    let host_dir = tempfile::tempdir().unwrap();
    // `/app -> <host dir>` and `/up -> ../../..`: both must land inside the root.
    symlink(host_dir.path(), r.join("app")).unwrap();
    symlink("/etc", r.join("etclink")).unwrap();
    symlink("../../../../..", r.join("up")).unwrap();
    let o = CopyOptions::default();
    copy_to(&ctx, &["payload"], r, "/app/", &o);
    copy_to(&ctx, &["payload"], r, "/etclink/", &o);
    copy_to(&ctx, &["payload"], r, "/up/x/", &o);
    assert!(!host_dir.path().join("payload").exists());
    let inside = host_dir.path().strip_prefix("/").unwrap().join("payload");
    assert_eq!(read(r, inside.to_str().unwrap()), "p");
    assert_eq!(read(r, "etc/payload"), "p");
    assert_eq!(read(r, "x/payload"), "p");
    // A symlink as the whole file dest is followed inside the root, as BuildKit does.
    symlink("/etc/target", r.join("last")).unwrap();
    copy_to(&ctx, &["payload"], r, "/last", &o);
    assert!(meta(r, "last").file_type().is_symlink());
    assert_eq!(read(r, "etc/target"), "p");
}

fn tar_bytes(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    b.into_inner().unwrap()
}

fn append(
    b: &mut tar::Builder<Vec<u8>>,
    kind: tar::EntryType,
    name: &str,
    data: &[u8],
    link: &str,
) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o640
    });
    h.set_uid(1234);
    h.set_gid(5678);
    h.set_mtime(1_500_000_000);
    h.set_size(data.len() as u64);
    // set_path refuses `..`, which is what the escape tests need, so write the name raw.
    let raw = &mut h.as_old_mut().name;
    raw.fill(0);
    raw[..name.len()].copy_from_slice(name.as_bytes());
    if !link.is_empty() {
        let raw = &mut h.as_old_mut().linkname;
        raw[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    io::Write::write_all(&mut e, data).unwrap();
    e.finish().unwrap()
}

#[test]
fn add_unpacks_local_tars_keeping_ownership() {
    use tar::EntryType as T;
    let plain = tar_bytes(|b| {
        append(b, T::Directory, "d/", b"", "");
        append(b, T::Regular, "d/f", b"tf", "");
        append(b, T::Link, "d/h", b"", "d/f");
        append(b, T::Symlink, "d/s", b"", "/etc/shadow");
    });
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.tar"), &plain).unwrap();
    fs::write(dir.path().join("a.tar.gz"), gzip(&plain)).unwrap();
    fs::write(dir.path().join("not-a-tar.gz.txt"), "plain").unwrap();
    let ctx = Context::from_dir(dir.path(), &Matcher::new_empty()).unwrap();
    let tree = ctx.source_tree();
    for src in ["a.tar", "a.tar.gz"] {
        let image = tempfile::tempdir().unwrap();
        let r = image.path();
        // An existing file is overwritten, an existing directory replaced by the file.
        write(r, "ar/d/f/inner", "old");
        write(r, "ar/d/s", "old");
        let resolved = tree.resolve(&[src]).unwrap();
        copy_into(&tree, &resolved, r, "/ar", &add()).unwrap();
        assert_eq!(read(r, "ar/d/f"), "tf", "{src}");
        assert_eq!(
            (meta(r, "ar/d/f").uid(), meta(r, "ar/d/f").gid()),
            (1234, 5678)
        );
        assert_eq!(meta(r, "ar/d/f").mode() & 0o7777, 0o640);
        assert_eq!(meta(r, "ar/d").mtime(), 1_500_000_000);
        assert_eq!(meta(r, "ar/d/h").ino(), meta(r, "ar/d/f").ino());
        assert_eq!(
            fs::read_link(r.join("ar/d/s")).unwrap(),
            Path::new("/etc/shadow")
        );
    }
    let image = tempfile::tempdir().unwrap();
    let resolved = tree.resolve(&["not-a-tar.gz.txt"]).unwrap();
    copy_into(&tree, &resolved, image.path(), "/x", &add()).unwrap();
    assert_eq!(read(image.path(), "x"), "plain");
}

#[test]
fn add_refuses_tar_entries_that_climb_out_and_writes_through_symlinks_stay_inside() {
    use tar::EntryType as T;
    let climbing = tar_bytes(|b| append(b, T::Regular, "../evil", b"x", ""));
    let linking = tar_bytes(|b| append(b, T::Link, "h", b"", "../../etc/passwd"));
    let through = tar_bytes(|b| {
        append(b, T::Symlink, "esc", b"", "/");
        append(b, T::Regular, "esc/pwned", b"x", "");
    });
    let dir = tempfile::tempdir().unwrap();
    for (name, data) in [
        ("c.tar", &climbing),
        ("l.tar", &linking),
        ("t.tar", &through),
    ] {
        fs::write(dir.path().join(name), data).unwrap();
    }
    let ctx = Context::from_dir(dir.path(), &Matcher::new_empty()).unwrap();
    let tree = ctx.source_tree();
    let image = tempfile::tempdir().unwrap();
    let r = image.path().join("root");
    fs::create_dir(&r).unwrap();
    for src in ["c.tar", "l.tar"] {
        let resolved = tree.resolve(&[src]).unwrap();
        let err = copy_into(&tree, &resolved, &r, "/in", &add()).unwrap_err();
        assert!(
            matches!(err, ContextError::Archive(ArchiveError::Escape { .. })),
            "{src}: {err}"
        );
    }
    assert!(!image.path().join("evil").exists());
    let resolved = tree.resolve(&["t.tar"]).unwrap();
    copy_into(&tree, &resolved, &r, "/in", &add()).unwrap();
    // `esc -> /` is the image's root, so the file lands at the root of the image.
    assert_eq!(read(&r, "pwned"), "x");
    assert!(!image.path().join("pwned").exists());
}

#[test]
fn add_of_a_url_is_refused_offline() {
    let err = check_add_source("https://example.com/x.tar.gz").unwrap_err();
    assert_eq!(
        err.to_string(),
        "ADD https://example.com/x.tar.gz: remote URLs are not supported offline"
    );
    assert!(check_add_source("local.tar").is_ok());
}

#[test]
fn context_from_tar_applies_its_dockerignore_and_refuses_escapes() {
    use tar::EntryType as T;
    let data = tar_bytes(|b| {
        append(b, T::Regular, "Dockerfile", b"FROM scratch", "");
        append(b, T::Regular, ".dockerignore", b"*.log\n", "");
        append(b, T::Regular, "/abs.txt", b"a", "");
        append(b, T::Regular, "x.log", b"l", "");
    });
    let ctx = Context::from_tar(&gzip(&data)[..], "Dockerfile").unwrap();
    assert!(ctx.is_included("abs.txt"));
    assert!(!ctx.is_included("x.log"));
    assert_eq!(read(ctx.root(), "abs.txt"), "a");

    let bad = tar_bytes(|b| append(b, T::Regular, "a/../../x", b"x", ""));
    assert!(matches!(
        Context::from_tar(&bad[..], "Dockerfile"),
        Err(ContextError::Archive(ArchiveError::Escape { .. }))
    ));
}

#[test]
fn heredoc_is_written_0644_with_dest_rules() {
    let image = tempfile::tempdir().unwrap();
    let r = image.path();
    copy_heredoc(r, "EOF", b"hello\n", "/etc/motd", &CopyOptions::default()).unwrap();
    assert_eq!(read(r, "etc/motd"), "hello\n");
    assert_eq!(meta(r, "etc/motd").mode() & 0o7777, 0o644);
    let opts = CopyOptions {
        chown: Some((7, 8)),
        chmod: Some(Chmod::parse("755").unwrap()),
        ..CopyOptions::default()
    };
    copy_heredoc(r, "script.sh", b"#!/bin/sh\n", "/bin/", &opts).unwrap();
    let m = meta(r, "bin/script.sh");
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o755, 7, 8));
}

#[test]
fn chmod_parses_octal_and_symbolic_modes() {
    assert_eq!(Chmod::parse("0755").unwrap().apply(0o600, false), 0o755);
    assert_eq!(Chmod::parse("4755").unwrap().apply(0o600, false), 0o4755);
    assert_eq!(Chmod::parse("u+x").unwrap().apply(0o644, false), 0o744);
    assert_eq!(Chmod::parse("go-w,a+r").unwrap().apply(0o666, false), 0o644);
    assert_eq!(
        Chmod::parse("u=rwX,go=rX").unwrap().apply(0o600, true),
        0o755
    );
    assert_eq!(
        Chmod::parse("u=rwX,go=rX").unwrap().apply(0o600, false),
        0o644
    );
    assert_eq!(Chmod::parse("+x").unwrap().apply(0o644, false), 0o755);
    for bad in ["", "9", "77777", "u", "u+q", "z+x", "u+x,"] {
        assert!(Chmod::parse(bad).is_err(), "{bad:?}");
    }
}

fn image_with_users() -> tempfile::TempDir {
    let image = tempfile::tempdir().unwrap();
    write(
        image.path(),
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\n# comment\napp:x:1000:1001::/home/app:/bin/sh\n",
    );
    write(
        image.path(),
        "etc/group",
        "root:x:0:\nstaff:x:50:app,other\napp:x:1001:\nwheel:x:10:root,app\n",
    );
    image
}

#[test]
fn user_resolution_follows_runtime_rules() {
    let image = image_with_users();
    let r = image.path();
    let u = |spec| resolve_user(r, spec).unwrap();
    assert_eq!(
        u("app"),
        User {
            uid: 1000,
            gid: 1001,
            additional_gids: vec![50, 10]
        }
    );
    assert_eq!((u("1000").uid, u("1000").gid), (1000, 1001));
    assert_eq!(u("1000").additional_gids, vec![50, 10]);
    // A uid without a passwd line runs with gid 0.
    assert_eq!((u("4242").uid, u("4242").gid), (4242, 0));
    assert_eq!(
        (u("app:staff").gid, u("app:staff").additional_gids.len()),
        (50, 0)
    );
    assert_eq!((u("4242:99").uid, u("4242:99").gid), (4242, 99));
    assert_eq!(u("").uid, 0);
    assert_eq!(
        resolve_user(r, "nobody").unwrap_err().to_string(),
        "unable to find user nobody: no matching entries in passwd file"
    );
    assert_eq!(
        resolve_user(r, "app:nogroup").unwrap_err().to_string(),
        "unable to find group nogroup: no matching entries in group file"
    );
}

#[test]
fn chown_resolution_follows_buildkit_rules() {
    let image = image_with_users();
    let r = image.path();
    assert_eq!(resolve_chown(r, "1234").unwrap(), (1234, 1234));
    assert_eq!(resolve_chown(r, "app").unwrap(), (1000, 1001));
    assert_eq!(resolve_chown(r, "app:staff").unwrap(), (1000, 50));
    assert_eq!(resolve_chown(r, "1234:55").unwrap(), (1234, 55));
    assert_eq!(resolve_chown(r, "4242:wheel").unwrap(), (4242, 10));
    assert!(matches!(
        resolve_chown(r, "ghost"),
        Err(UserError::UnknownUser { .. })
    ));
    assert!(matches!(
        resolve_chown(r, "app:"),
        Err(UserError::InvalidSpec { .. })
    ));
    // Numeric ids need no /etc at all.
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(resolve_chown(empty.path(), "5:6").unwrap(), (5, 6));
}

#[test]
fn passwd_is_read_inside_the_image_even_through_an_absolute_symlink() {
    let image = tempfile::tempdir().unwrap();
    let r = image.path();
    write(r, "real/passwd", "inside:x:77:77::/:/bin/sh\n");
    fs::create_dir(r.join("etc")).unwrap();
    // On the host /etc/passwd has root; inside the image `/etc/passwd -> /real/passwd`.
    symlink("/real/passwd", r.join("etc/passwd")).unwrap();
    assert_eq!(resolve_user(r, "inside").unwrap().uid, 77);
    assert!(resolve_user(r, "root").is_err());
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: both strings are NUL-terminated and the value is valid for its length.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "{}", io::Error::last_os_error());
}

fn xattrs_of(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    root::read_xattrs(path).unwrap()
}

#[test]
fn copy_keeps_xattrs_and_they_are_part_of_the_hash() {
    let (dir, _) = context(&[("d/f", "f")], "");
    let ctx = Context::from_dir(dir.path(), &Matcher::new_empty()).unwrap();
    let hash = |ctx: &Context| {
        let t = ctx.source_tree();
        content_hash(&t, &t.resolve(&["d"]).unwrap()).unwrap()
    };
    let before = hash(&ctx);
    set_xattr(&dir.path().join("d/f"), "user.img", b"v");
    set_xattr(&dir.path().join("d"), "trusted.img", b"w");
    assert_ne!(hash(&ctx), before);

    let opts = CopyOptions {
        chown: Some((1, 1)),
        ..CopyOptions::default()
    };
    let image = copy(&ctx, &["d"], "/out/", &opts);
    assert_eq!(
        xattrs_of(&image.path().join("out/f")),
        vec![(b"user.img".to_vec(), b"v".to_vec())]
    );
    let image = copy(&ctx, &["."], "/", &opts);
    assert_eq!(
        xattrs_of(&image.path().join("d")),
        vec![(b"trusted.img".to_vec(), b"w".to_vec())]
    );
}

#[test]
fn add_restores_pax_xattrs() {
    let data = tar_bytes(|b| {
        b.append_pax_extensions([("SCHILY.xattr.user.cap", &b"bin"[..])])
            .unwrap();
        append(b, tar::EntryType::Regular, "f", b"x", "");
    });
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("x.tar"), &data).unwrap();
    let ctx = Context::from_dir(dir.path(), &Matcher::new_empty()).unwrap();
    let tree = ctx.source_tree();
    let image = tempfile::tempdir().unwrap();
    let resolved = tree.resolve(&["x.tar"]).unwrap();
    copy_into(&tree, &resolved, image.path(), "/", &add()).unwrap();
    assert_eq!(
        xattrs_of(&image.path().join("f")),
        vec![(b"user.cap".to_vec(), b"bin".to_vec())]
    );
}
