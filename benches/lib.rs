//! Criterion benchmarks of voicegate's hot paths; the benches live in `benches/`.
