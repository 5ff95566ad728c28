//! The fuzz corpus (`fuzz/corpus/<target>/`) replayed as regression tests:
//! every input the fuzzers kept, and every crash they found once, runs
//! through the same checks as under the fuzzer (`gangway_wire::fuzzing`).

use std::path::Path;

#[test]
fn fuzz_corpus_replays_without_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for target in gangway_wire::fuzzing::TARGETS {
        let dir = root.join(target);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            gangway_wire::fuzzing::run(target, &data);
            n += 1;
        }
        assert!(n > 0, "empty corpus in {}", dir.display());
    }
}
