//! Unit tests of the layer meter.

use super::*;

fn limits(max_ratio: u64, max_stored: Option<u64>) -> ImportLimits {
    ImportLimits {
        max_ratio,
        max_stored,
        ..Default::default()
    }
}

#[test]
fn long_zero_runs_count_as_holes_and_data_does_not() {
    let l = limits(0, Some(3 * HOLE_GRAIN));
    let mut m = Meter::new(&l);
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..((4 * HOLE_GRAIN) >> 20) {
        m.feed(&zeros, None).unwrap();
    }
    m.feed(b"x", None).unwrap();
    let data = vec![1u8; 1 << 20];
    let mut fed = 0;
    let err = loop {
        if let Err(e) = m.feed(&data, None) {
            break e;
        }
        fed += 1;
    };
    assert!(err.to_string().contains("--max-stored"), "{err}");
    // Two of the run's four grains counted as data, so one more grain of data meets the bound.
    assert_eq!(fed, (HOLE_GRAIN >> 20) - 1);
}

#[test]
fn ratio_is_checked_past_the_floor_only() {
    let l = limits(10, None);
    let mut m = Meter::new(&l);
    let data = vec![7u8; 1 << 20];
    for _ in 0..(RATIO_FLOOR >> 20) {
        m.feed(&data, Some(1)).unwrap();
    }
    let err = m.feed(&data, Some(1)).unwrap_err();
    assert!(err.to_string().contains("10 times"), "{err}");
    let mut m = Meter::new(&l);
    for _ in 0..2 * (RATIO_FLOOR >> 20) {
        m.feed(&data, Some(RATIO_FLOOR)).unwrap();
    }
}
