//! Images img builds, on both backends, compared with what buildah builds from the same
//! Dockerfile: file trees (path, type, mode, owner, content, link target, hard links) and config.
//! Where buildah 1.28 departs from Docker's reference (heredocs, `!` re-includes), the test
//! checks the result Docker's reference describes instead, and says so.

use std::fs;

use crate::{BACKENDS, Rig, can_run, context, same_as_buildah};

#[test]
fn every_config_instruction_and_copy_flags_match_buildah() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let ctx = context(
        r#"FROM busybox
LABEL note="two words" version=1.0
MAINTAINER someone@example.com
ARG BASEDIR=/srv
ENV APP_HOME=$BASEDIR/app PATH=/usr/local/bin:$PATH
ENV OLD_FORM value with spaces
WORKDIR $APP_HOME
COPY --chmod=0750 run.sh ./
COPY conf/ /etc/app/
COPY --chown=1000:1000 data.txt /home/user/
COPY *.md docs/
ADD files.tar /opt/
RUN mkdir -p /var/log/app && echo "started in $(pwd) as $(id -u)" > /var/log/app/log \
    && chmod 0600 /var/log/app/log
EXPOSE 8080 53/udp
VOLUME ["/data"]
USER 1000
SHELL ["/bin/sh", "-ec"]
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --retries=3 CMD wget -q localhost:8080 || exit 1
ONBUILD RUN echo child
ENTRYPOINT ["/srv/app/run.sh"]
CMD ["--serve"]
"#,
        &[
            ("run.sh", "#!/bin/sh\necho run\n"),
            ("conf/a.conf", "a=1\n"),
            ("conf/nested/b.conf", "b=2\n"),
            ("data.txt", "data\n"),
            ("one.md", "1\n"),
            ("two.md", "2\n"),
        ],
    );
    let tar = tests::LayerBuilder::new()
        .dir("pkg", 0o755)
        .file("pkg/bin", 0o755, "binary")
        .owner(123, 456)
        .file("pkg/owned", 0o640, "owned by 123")
        .finish();
    fs::write(ctx.path().join("files.tar"), tar).unwrap();
    let img = same_as_buildah(&rig, ctx.path(), "everything", &[]);
    assert_eq!(img.config["User"], "1000");
    assert_eq!(
        img.config["Healthcheck"]["Test"],
        serde_json::json!(["CMD-SHELL", "wget -q localhost:8080 || exit 1"])
    );
}

#[test]
fn deleted_files_and_directories_become_whiteouts_as_in_buildah() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let ctx = context(
        "FROM busybox
RUN rm /etc/group && rm -rf /home/user
RUN rm -rf /var && mkdir /var && echo fresh > /var/only
RUN mkdir -p /gone/deep && echo x > /gone/deep/file
RUN rm -rf /gone && rm /bin/ls
",
        &[],
    );
    let img = same_as_buildah(&rig, ctx.path(), "whiteouts", &[]);
    assert!(img.tree.get("etc/group").is_none());
    assert!(img.tree.get("gone").is_none());
    assert!(img.tree.get("var/only").is_some());
}

#[test]
fn what_a_run_step_fsyncs_is_in_its_layer_as_in_buildah() {
    if !can_run() {
        return;
    }
    // Step snapshots are mounted volatile: these syncs return at once, and the commit must
    // still hold every byte of them.
    let rig = Rig::create();
    let ctx = context(
        "FROM busybox
RUN mkdir /d && echo data > /d/f && sync /d/f && sync -d /d/f && sync /d && echo g > /d/g
RUN echo more >> /d/f && sync -f /d/f && rm /d/g && sync /d
",
        &[],
    );
    let img = same_as_buildah(&rig, ctx.path(), "fsynced", &[]);
    assert!(img.tree.get("d/f").is_some());
    assert!(img.tree.get("d/g").is_none());
}

#[test]
fn run_steps_on_overlayfs_get_a_volatile_root() {
    if !can_run() {
        return;
    }
    // The container's root is the step's overlay mount; its super block options say whether
    // the kernel skips syncs to the upper dir (`volatile`, shown as `fsync=volatile` by 6.x).
    let rig = Rig::create();
    let ctx = context(
        "FROM busybox
RUN grep ' / / ' /proc/self/mountinfo | grep -Eq ',(fsync=)?volatile(,|$)'
",
        &[],
    );
    rig.img_build(ctx.path(), "overlayfs", "volatile", &[]);
}

#[test]
fn users_groups_and_hard_links_match_buildah() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let ctx = context(
        "FROM busybox
RUN echo 'app:x:2000:2000::/home/app:/bin/sh' >> /etc/passwd \
    && echo 'app:x:2000:' >> /etc/group && echo 'grp:x:3000:app' >> /etc/group \
    && mkdir -p /home/app && chown app:app /home/app
COPY --chown=app:grp f.txt /home/app/
COPY --chown=2000 g.txt /home/app/g/
USER app
WORKDIR /home/app
RUN echo mine > mine.txt && ln mine.txt link.txt && mkdir sub && ln mine.txt sub/third && id > ids
USER 2000:3000
RUN id > /tmp/numeric-ids
",
        &[("f.txt", "f\n"), ("g.txt", "g\n")],
    );
    let img = same_as_buildah(&rig, ctx.path(), "users", &[]);
    let mine = img.tree.get("home/app/mine.txt").expect("mine.txt");
    assert_eq!((mine.uid, mine.gid), (2000, 2000));
    assert!(mine.hardlink_group.is_some(), "hard links survive");
    let f = img.tree.get("home/app/f.txt").unwrap();
    assert_eq!((f.uid, f.gid), (2000, 3000));
}

#[test]
fn multi_stage_builds_copy_from_stages_by_name_and_index() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let ctx = context(
        "FROM busybox AS build
RUN mkdir /out && echo built > /out/artifact && ln -s artifact /out/link
FROM busybox
COPY --from=build /out /dist
COPY --from=0 /out/artifact /single
",
        &[],
    );
    let img = same_as_buildah(&rig, ctx.path(), "stages", &[]);
    assert!(img.tree.get("dist/link").is_some());
}

#[test]
fn build_args_and_target_match_buildah() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let ctx = context(
        "ARG BASE=busybox
FROM $BASE AS first
ARG MSG=default
ENV FROM_ENV=${MSG:-unset}-suffix
RUN echo \"$MSG\" > /msg
FROM first AS second
RUN echo second > /second
",
        &[],
    );
    let img = same_as_buildah(
        &rig,
        ctx.path(),
        "args",
        &["--build-arg", "MSG=custom", "--target", "first"],
    );
    assert!(img.tree.get("second").is_none(), "--target stops at first");
    assert_eq!(
        img.tree.get("msg").unwrap().sha256,
        tests::manifest::Entry::file(0o644, b"custom\n").sha256
    );
}

#[test]
fn a_forty_step_dockerfile_matches_buildah() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let mut df = String::from("FROM busybox\n");
    let mut files = Vec::new();
    for i in 0..40 {
        match i % 4 {
            0 => df.push_str(&format!(
                "RUN echo {i} > /step{i} && rm -f /step{}\n",
                i.max(4) - 4
            )),
            1 => {
                df.push_str(&format!("COPY f{i}.txt /files/\n"));
                files.push((format!("f{i}.txt"), format!("file {i}\n")));
            }
            2 => df.push_str(&format!("ENV STEP{i}={i}\n")),
            _ => df.push_str(&format!("RUN mkdir -p /d{i} && chmod 70{} /d{i}\n", i % 8)),
        }
    }
    let file_refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let ctx = context(&df, &file_refs);
    same_as_buildah(&rig, ctx.path(), "forty", &[]);
}

/// buildah 1.28 drops files that a `!` pattern re-includes under an excluded directory; Docker's
/// reference keeps them, so this checks the tree Docker's rules give.
#[test]
fn dockerignore_excludes_and_re_includes_as_docker_documents() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let ctx = context(
        "FROM busybox\nCOPY . /ctx/\n",
        &[
            (
                ".dockerignore",
                "*.log\nsecret/\n!secret/keep.txt\n**/*.tmp\n",
            ),
            ("a.txt", "a"),
            ("x.log", "log"),
            ("secret/hidden", "no"),
            ("secret/keep.txt", "yes"),
            ("sub/b.txt", "b"),
            ("sub/c.tmp", "tmp"),
        ],
    );
    for backend in BACKENDS {
        let img = rig.img_build(ctx.path(), backend, &format!("ignore-{backend}"), &[]);
        let mut got: Vec<String> = img
            .tree
            .iter()
            .filter_map(|(p, _)| p.strip_prefix("ctx").ok().map(|p| p.display().to_string()))
            .filter(|p| !p.is_empty())
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ".dockerignore",
                "Dockerfile",
                "a.txt",
                "secret",
                "secret/keep.txt",
                "sub",
                "sub/b.txt"
            ],
            "{backend}"
        );
    }
}

/// buildah 1.28 has no heredocs (nor `COPY --link`): the expected files come from Docker's
/// reference.
#[test]
fn heredocs_in_run_and_copy() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let ctx = context(
        r#"FROM busybox
ARG NAME=world
RUN <<EOF
echo one > /one
echo "two $NAME" > /two
EOF
COPY <<EOT /greeting.txt
hello $NAME
EOT
COPY --link <<'EOT' /literal.txt
hello $NAME
EOT
RUN cat <<EOF > /three
three
EOF
SHELL ["/bin/sh", "-ec"]
CMD echo shell form after SHELL
"#,
        &[],
    );
    for backend in BACKENDS {
        let img = rig.img_build(ctx.path(), backend, &format!("heredoc-{backend}"), &[]);
        let content = |p: &str| {
            let e = img
                .tree
                .get(p)
                .unwrap_or_else(|| panic!("{backend}: no {p}"));
            e.sha256.clone().unwrap()
        };
        let sha = |s: &str| {
            tests::manifest::Entry::file(0o644, s.as_bytes())
                .sha256
                .unwrap()
        };
        assert_eq!(content("one"), sha("one\n"), "{backend}");
        assert_eq!(content("two"), sha("two world\n"), "{backend}");
        assert_eq!(content("greeting.txt"), sha("hello world\n"), "{backend}");
        assert_eq!(content("literal.txt"), sha("hello $NAME\n"), "{backend}");
        assert_eq!(content("three"), sha("three\n"), "{backend}");
        // Docker's reference: SHELL applies to the shell form of CMD and ENTRYPOINT too
        // (buildah 1.28 keeps /bin/sh -c there).
        assert_eq!(
            img.config["Cmd"],
            serde_json::json!(["/bin/sh", "-ec", "echo shell form after SHELL"]),
            "{backend}"
        );
    }
}

#[test]
fn only_the_stages_the_target_needs_are_built() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let ctx = context(
        "FROM busybox AS broken
RUN exit 1
FROM busybox AS good
RUN echo ok > /ok
FROM good
RUN cat /ok
",
        &[],
    );
    for backend in BACKENDS {
        let img = rig.img_build(ctx.path(), backend, &format!("skip-{backend}"), &[]);
        assert!(img.tree.get("ok").is_some());
    }
}

#[test]
fn escape_directive_exec_forms_expanded_flags_and_onbuild_match_buildah() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let parent = context(
        "# escape=`
FROM busybox
ARG OWNER=1000
ENV DIR=/opt/data
RUN [\"/bin/sh\", \"-c\", \"echo exec > /exec\"]
RUN echo one `
    two > /continued
COPY --chown=${OWNER}:${OWNER} f.txt $DIR/
ENTRYPOINT exec echo shell form
SHELL [\"/bin/sh\", \"-ec\"]
RUN echo \"shell is $0\" > /shell
ONBUILD COPY child.txt /from-child.txt
ONBUILD RUN echo triggered > /triggered
",
        &[("f.txt", "f\n")],
    );
    same_as_buildah(&rig, parent.path(), "parent", &[]);
    // The child builds FROM the parent, so ONBUILD triggers run first; each tool's child is built
    // on its own parent image.
    let child_df = |base: &str| format!("FROM {base}\nRUN test -f /triggered\n");
    let child_files = [("child.txt", "child\n")];
    let theirs_ctx = context(&child_df("localhost/parent"), &child_files);
    let theirs = rig.buildah_build(theirs_ctx.path(), "child", &[]);
    for backend in BACKENDS {
        let ctx = context(&child_df(&format!("parent-{backend}")), &child_files);
        let ours = rig.img_build(ctx.path(), backend, &format!("child-{backend}"), &[]);
        let diff = ours.tree.diff(&theirs.tree);
        assert!(diff.is_empty(), "{backend}:\n{}", diff.join("\n"));
        assert_eq!(
            crate::normalized_config(&ours.config),
            crate::normalized_config(&theirs.config),
            "{backend}"
        );
        assert!(
            ours.config
                .get("OnBuild")
                .is_none_or(|v| v.as_array().is_none_or(|a| a.is_empty()))
        );
    }
}

/// ADD unpacks local archives whatever their compression (Docker's: gzip, bzip2, xz, and zstd
/// since BuildKit 0.10).
#[test]
fn add_unpacks_gzip_bzip2_xz_and_zstd_archives() {
    if !can_run() {
        return;
    }
    let rig = Rig::create();
    let ctx = context(
        "FROM busybox\nADD a.tar.gz b.tar.bz2 c.tar.xz d.tar.zst /unpacked/\n",
        &[],
    );
    let tar = |name: &str| {
        tests::LayerBuilder::new()
            .file(format!("from-{name}"), 0o644, name)
            .finish()
    };
    let write = |file: &str, bytes: Vec<u8>| fs::write(ctx.path().join(file), bytes).unwrap();
    write("a.tar.gz", tests::layer::gzip(&tar("gzip")));
    write("d.tar.zst", zstd::encode_all(&tar("zstd")[..], 3).unwrap());
    for (file, tool, name) in [("b.tar.bz2", "bzip2", "bzip2"), ("c.tar.xz", "xz", "xz")] {
        let mut child = std::process::Command::new(tool)
            .arg("-c")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let data = tar(name);
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &data));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        write(file, out.stdout);
    }
    for backend in BACKENDS {
        let img = rig.img_build(ctx.path(), backend, &format!("add-{backend}"), &[]);
        for name in ["gzip", "bzip2", "xz", "zstd"] {
            let e = img
                .tree
                .get(format!("unpacked/from-{name}"))
                .unwrap_or_else(|| panic!("{backend}: {name} archive not unpacked"));
            assert_eq!(
                e.sha256,
                tests::manifest::Entry::file(0o644, name.as_bytes()).sha256
            );
        }
    }
}
