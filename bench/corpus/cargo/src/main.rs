//! Counts the words of its arguments and prints the counts as JSON.

use fnv::FnvHashMap;

fn main() {
    let mut counts: FnvHashMap<String, u64> = FnvHashMap::default();
    for word in std::env::args().skip(1) {
        *counts.entry(word).or_default() += 1;
    }
    println!("{}", serde_json::to_string(&counts).expect("counts serialize"));
}
