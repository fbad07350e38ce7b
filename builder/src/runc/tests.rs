//! Unit tests of the runc spec for user namespaces: which gids a spec keeps under each id map.

use super::*;
use crate::userns::IdMap;

fn spec_with_groups(additional: Vec<u32>) -> Spec {
    let mut spec = Spec::default();
    let user = UserBuilder::default()
        .uid(0u32)
        .gid(0u32)
        .additional_gids(additional)
        .build()
        .unwrap();
    spec.set_process(Some(ProcessBuilder::default().user(user).build().unwrap()));
    spec
}

fn devpts_options(spec: &Spec) -> Vec<String> {
    spec.mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new("/dev/pts"))
        .and_then(|m| m.options().clone())
        .unwrap()
}

#[test]
fn a_map_of_only_the_users_own_id_drops_other_groups_and_the_tty_gid() {
    let mut spec = spec_with_groups(vec![0, 10, 1000]);
    assert!(devpts_options(&spec).contains(&"gid=5".to_owned()));
    drop_unmapped_gids(
        &mut spec,
        &IdMap::parse("         0       1002          1\n"),
    );
    let user = spec.process().as_ref().unwrap().user();
    assert_eq!(user.additional_gids().clone(), Some(vec![0]));
    let options = devpts_options(&spec);
    assert!(
        !options.iter().any(|o| o.starts_with("gid=")),
        "{options:?}"
    );
    assert!(options.contains(&"ptmxmode=0666".to_owned()), "{options:?}");
}

#[test]
fn a_map_with_subordinate_ids_keeps_the_spec_root_gets() {
    let mut spec = spec_with_groups(vec![0, 10, 1000]);
    let before = spec.clone();
    drop_unmapped_gids(&mut spec, &IdMap::parse("0 1001 1\n1 100000 65536\n"));
    assert_eq!(spec, before);
}
