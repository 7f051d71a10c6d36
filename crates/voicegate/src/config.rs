//! Configuration: TOML file plus VOICEGATE_<SECTION>_<KEY> environment overrides.
