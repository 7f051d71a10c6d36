//! The container image's conditions, without a Docker engine. The final stage of
//! docker/Dockerfile is read (COPY, ENV, VOLUME, WORKDIR, USER, ENTRYPOINT) and the built
//! binary is run the way the ENTRYPOINT runs it, inside a temp directory standing for the
//! image's root: the files the image copies are at the same paths under it, each volume is an
//! empty directory owned by the user voicegate runs as, the working directory is the image's
//! (`/` when the file sets none), the environment is only the file's ENV plus port overrides
//! (as `docker run -e` would add), and the process is not root, so that, as in the image, it
//! cannot write to the root or the working directory.
//!
//! Not reproduced: the release build and the bookworm-slim userland (this runs the debug
//! binary on the test machine) and the container's own network namespace.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::binary::{Served, BIN};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// What the final stage of docker/Dockerfile says, in order of appearance where it matters.
#[derive(Debug, Default)]
struct Image {
    /// `COPY` into the image: (source, destination); the source is `None` for `--from`
    /// another stage (the build stage's voicegate binary).
    copies: Vec<(Option<String>, String)>,
    env: Vec<(String, String)>,
    volumes: Vec<String>,
    workdir: Option<String>,
    user: Option<String>,
    entrypoint: Vec<String>,
    /// The `RUN` commands before the first `VOLUME`.
    runs_before_volume: Vec<String>,
}

/// docker/Dockerfile's instructions: comments dropped, continued lines joined.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut all = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        match line.trim_end().strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                let joined = std::mem::take(&mut current);
                if let Some((op, args)) = joined.trim().split_once(char::is_whitespace) {
                    all.push((op.to_ascii_uppercase(), args.trim().to_string()));
                }
            }
        }
    }
    all
}

/// Whitespace-separated words, double quotes grouping.
fn words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

fn json_or_words(args: &str) -> Vec<String> {
    if args.starts_with('[') {
        serde_json::from_str(args).unwrap_or_else(|e| panic!("not a JSON array: {args}: {e}"))
    } else {
        words(args)
    }
}

fn read_image() -> Image {
    let text = std::fs::read_to_string(format!("{REPO}/docker/Dockerfile")).unwrap();
    let all = instructions(&text);
    let last_from = all
        .iter()
        .rposition(|(op, _)| op == "FROM")
        .expect("a FROM line");
    let mut image = Image::default();
    for (op, args) in &all[last_from + 1..] {
        match op.as_str() {
            "COPY" => {
                let words = words(args);
                let from_stage = words.iter().any(|w| w.starts_with("--from"));
                let paths: Vec<&String> = words.iter().filter(|w| !w.starts_with("--")).collect();
                let [source, destination] = paths[..] else {
                    panic!("COPY with one source and one destination expected: {args}");
                };
                image
                    .copies
                    .push(((!from_stage).then(|| source.clone()), destination.clone()));
            }
            "ENV" => {
                let words = words(args);
                if words[0].contains('=') {
                    for pair in words {
                        let (key, value) = pair.split_once('=').unwrap();
                        image.env.push((key.into(), value.into()));
                    }
                } else {
                    image.env.push((words[0].clone(), words[1..].join(" ")));
                }
            }
            "VOLUME" => image.volumes.extend(json_or_words(args)),
            "WORKDIR" => image.workdir = Some(args.clone()),
            "USER" => image.user = Some(args.clone()),
            "ENTRYPOINT" => image.entrypoint = json_or_words(args),
            "RUN" if image.volumes.is_empty() => image.runs_before_volume.push(args.clone()),
            _ => {}
        }
    }
    image
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

/// The image's root, laid out in a temp directory; removed when dropped.
struct ImageRoot {
    path: PathBuf,
}

impl ImageRoot {
    /// `image_path` (absolute, as in the image) inside this root.
    fn at(&self, image_path: &str) -> PathBuf {
        self.path.join(image_path.trim_start_matches('/'))
    }

    /// `text` with every path the image defines (its files and volumes) moved into this root.
    fn rooted(&self, image: &Image, text: &str) -> String {
        let mut paths: Vec<&String> = image
            .volumes
            .iter()
            .chain(image.copies.iter().map(|(_, destination)| destination))
            .collect();
        // Longest first, so that a path inside another is moved once.
        paths.sort_by_key(|p| std::cmp::Reverse(p.len()));
        let mut text = text.to_string();
        for path in paths {
            text = text.replace(path.as_str(), &self.at(path).display().to_string());
        }
        text
    }
}

impl Drop for ImageRoot {
    fn drop(&mut self) {
        let _ = std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o755));
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A uid and gid that are not root (nobody's), for the process the image runs as `USER`.
const NOT_ROOT: u32 = 65534;

/// Lays out the image's files and volumes in a temp root and returns the command its
/// ENTRYPOINT would run there, with `env` (the image's ENV, rooted) and SIP, API and RTP on
/// free loopback ports.
fn image_command(image: &Image, env: &[(String, String)]) -> (ImageRoot, Command) {
    let root = ImageRoot {
        path: std::env::temp_dir().join(format!("vg-image-{:x}", rand::random::<u64>())),
    };
    std::fs::create_dir_all(&root.path).unwrap();
    for (source, destination) in &image.copies {
        let source = match source {
            Some(source) => PathBuf::from(REPO).join(source),
            // The build stage's product: the binary under test.
            None => PathBuf::from(BIN),
        };
        let target = root.at(destination);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&source, &target)
            .unwrap_or_else(|e| panic!("COPY {} {destination}: {e}", source.display()));
    }
    for volume in &image.volumes {
        let dir = root.at(volume);
        std::fs::create_dir_all(&dir).unwrap();
        if running_as_root() {
            std::os::unix::fs::chown(&dir, Some(NOT_ROOT), Some(NOT_ROOT)).unwrap();
        }
    }

    let (program, args) = image.entrypoint.split_first().expect("an ENTRYPOINT");
    let program = if program.starts_with('/') {
        root.at(program)
    } else {
        let copied = image
            .copies
            .iter()
            .find(|(_, destination)| Path::new(destination).file_name() == Some(program.as_ref()))
            .unwrap_or_else(|| panic!("the image has no {program} to run"));
        root.at(&copied.1)
    };
    let mut cmd = Command::new(program);
    cmd.args(args.iter().map(|a| root.rooted(image, a)));
    cmd.current_dir(root.at(image.workdir.as_deref().unwrap_or("/")));
    cmd.env_clear().env("PATH", "/usr/local/bin:/usr/bin:/bin");
    for (key, value) in env {
        cmd.env(key, root.rooted(image, value));
    }
    let (rtp_min, rtp_max) = common::rtp_range(50);
    for (key, value) in [
        ("VOICEGATE_SIP_UDP", "127.0.0.1:0".to_string()),
        ("VOICEGATE_SIP_TCP", "127.0.0.1:0".to_string()),
        ("VOICEGATE_SIP_TLS", "127.0.0.1:0".to_string()),
        ("VOICEGATE_API_LISTEN", "127.0.0.1:0".to_string()),
        ("VOICEGATE_RTP_PORT_MIN", rtp_min.to_string()),
        ("VOICEGATE_RTP_PORT_MAX", rtp_max.to_string()),
    ] {
        cmd.env(key, value);
    }
    // Not root, like the image's USER: the root and the working directory are not writable.
    if running_as_root() {
        cmd.uid(NOT_ROOT).gid(NOT_ROOT);
    } else {
        std::fs::set_permissions(&root.path, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    (root, cmd)
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_starts_keeps_its_store_in_its_data_volume_and_answers_options() {
    let image = read_image();
    assert!(
        image
            .user
            .as_deref()
            .is_some_and(|u| u != "root" && u != "0"),
        "the image runs as a user of its own: {:?}",
        image.user
    );
    let (root, cmd) = image_command(&image, &image.env);
    let before = names_in(&root.path);
    let serving =
        Served::try_start(cmd).unwrap_or_else(|stderr| panic!("the image's voicegate: {stderr}"));

    let options = common::sipp(
        serving.udp,
        &[
            "-sf",
            common::scenario("options.xml").to_str().unwrap(),
            "-s",
            "echo",
            "-m",
            "1",
        ],
    )
    .await;
    let (status, _, _) = serving.stop();
    common::assert_sipp_ok(&options, 1);
    assert!(status.success(), "exit on SIGTERM: {status:?}");

    let stores: Vec<PathBuf> = image
        .volumes
        .iter()
        .map(|v| root.at(v).join("voicegate.db"))
        .filter(|db| db.is_file())
        .collect();
    assert_eq!(
        stores.len(),
        1,
        "voicegate.db written in the data volume {:?}",
        image.volumes
    );
    assert_eq!(
        names_in(&root.path),
        before,
        "nothing written outside the image's files and volumes"
    );
}

/// The image as it was: no VOICEGATE_STORE_URL, so the default relative store path lands in
/// the working directory, which the image's user cannot write. Start-up must stop with one
/// clear line naming the key and the file.
#[test]
fn without_its_store_setting_the_image_stops_naming_the_store_file() {
    let image = read_image();
    let env: Vec<(String, String)> = image
        .env
        .iter()
        .filter(|(key, _)| key != "VOICEGATE_STORE_URL")
        .cloned()
        .collect();
    let (root, cmd) = image_command(&image, &env);
    let stderr = match Served::try_start(cmd) {
        Ok(serving) => {
            serving.stop();
            panic!("voicegate started with its store in an unwritable working directory");
        }
        Err(stderr) => stderr,
    };
    let workdir = root.at(image.workdir.as_deref().unwrap_or("/"));
    let file = workdir.join("voicegate.db");
    assert!(stderr.contains("exit status: 2"), "{stderr}");
    assert!(
        stderr.contains("store.url")
            && stderr.contains("VOICEGATE_STORE_URL")
            && stderr.contains(&format!("the file {}", file.display())),
        "{stderr}"
    );
}

/// Docker fills a new volume from the image's directory at that path, owner included: it must
/// exist and belong to the image's user before VOLUME, or the store cannot be created.
#[test]
fn the_image_makes_each_volume_directory_its_users_before_declaring_it() {
    let image = read_image();
    let user = image.user.as_deref().expect("a USER line");
    assert!(!image.volumes.is_empty(), "a VOLUME for the data directory");
    for volume in &image.volumes {
        assert!(
            image.runs_before_volume.iter().any(|run| {
                run.contains(&format!("mkdir -p {volume}"))
                    && run.contains(&format!("chown {user}:{user} {volume}"))
            }),
            "no RUN makes {volume} and gives it to {user} before VOLUME"
        );
    }
    assert!(
        image
            .env
            .iter()
            .any(|(key, value)| key == "VOICEGATE_STORE_URL"
                && image
                    .volumes
                    .iter()
                    .any(|v| value.starts_with(&format!("sqlite://{v}/")))),
        "VOICEGATE_STORE_URL names a file in a volume: {:?}",
        image.env
    );
}
