//! Use what you verified (issue 11 item 6): the bytes the tokenizer, config parser and weight
//! loader get are the bytes that were hashed, never re-read from the executable afterwards.
//!
//! The attack from the review, as a test: `serve` runs from a loop-mounted ext4 image; as soon
//! as it logs "bundle verified", the test rewrites the backing blocks of tokenizer.json in the
//! image (`"hello":7592` → `"hello":2088`, the id of "world") and evicts the file's page cache,
//! so any later read of the executable sees the new bytes. The running server must still
//! tokenize "hello" as 7592. (On the code before this change it answered 2088: the verified
//! pages were dropped after hashing and faulted back in from the file for loading.)
//!
//! The word-embedding table is different: `serve` reads it in place and gives its pages back
//! after loading (half of MiniLM's weights would otherwise stay resident), reading a page again
//! from the executable on first use and checking it against the SHA-256 it had when verified.
//! So the same attack also overwrites the row of "hello" in the image: the server must refuse
//! to embed "hello" (it cannot use bytes that changed), never answer with the new row.
//!
//! Needs root (to mount) and `mkfs.ext4` (e2fsprogs); CI runs as root and `.ci/run` installs
//! e2fsprogs. Without them the test fails, it does not skip.

mod common;

use common::binary::{bundle_of, read_at};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const ORIGINAL: &[u8] = b"\"hello\":7592";
const REPLACED: &[u8] = b"\"hello\":2088";

/// The mounted image; unmounted on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The server; killed on drop (before the image is unmounted).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|e| {
        panic!("cannot run {command:?}: {e} (install e2fsprogs and util-linux)")
    });
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The one offset of `needle` in `haystack`.
fn only_offset(haystack: &[u8], needle: &[u8]) -> usize {
    let found: Vec<usize> = haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(found.len(), 1, "expected one occurrence, found {found:?}");
    found[0]
}

/// Status and body of `POST /embed {"inputs": text}`.
fn embed(base: &str, text: &str) -> (String, String) {
    let output = Command::new("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            "-XPOST",
            &format!("{base}/embed"),
        ])
        .args(["-H", "content-type: application/json"])
        .args(["-d", &serde_json::json!({ "inputs": text }).to_string()])
        .output()
        .expect("curl (apt-get install -y curl)");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').expect("status line");
    (status.to_string(), body.to_string())
}

/// Bytes `[start, end)` of tensor `name` inside safetensors `bytes`.
fn tensor_range(bytes: &[u8], name: &str) -> (usize, usize) {
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let offsets = &header[name]["data_offsets"];
    let start = 8 + header_len + offsets[0].as_u64().unwrap() as usize;
    let end = 8 + header_len + offsets[1].as_u64().unwrap() as usize;
    (start, end)
}

fn tokenize_hello(base: &str) -> Vec<u64> {
    let output = Command::new("curl")
        .args(["-sf", "-XPOST", &format!("{base}/tokenize")])
        .args(["-H", "content-type: application/json"])
        .args(["-d", r#"{"inputs": "hello"}"#])
        .output()
        .expect("curl (apt-get install -y curl)");
    assert!(output.status.success(), "POST /tokenize failed");
    let tokens: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    tokens[0]
        .as_array()
        .expect("tokens of input 0")
        .iter()
        .map(|t| t["id"].as_u64().expect("id"))
        .collect()
}

/// Drops the clean page-cache pages of `path`, so the next read goes to the (loop) device.
fn evict(path: &Path) {
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: plain posix_fadvise on a descriptor we own.
    let rc = unsafe {
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
            0,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    assert_eq!(rc, 0, "posix_fadvise");
}

#[test]
fn the_server_keeps_the_bytes_it_hashed_when_its_executable_changes_on_disk() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test mounts a loop device and must run as root (CI does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("fs.img");
    let mount_point = dir.path().join("mnt");
    std::fs::create_dir(&mount_point).unwrap();
    let serve_len = std::fs::metadata(env!("CARGO_BIN_EXE_serve"))
        .unwrap()
        .len();
    std::fs::File::create(&image)
        .unwrap()
        .set_len(serve_len + (64 << 20))
        .unwrap();
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
    run(Command::new("mount")
        .args(["-o", "loop"])
        .arg(&image)
        .arg(&mount_point));
    let _mounted = Mounted(mount_point.clone());
    let serve = mount_point.join("serve");
    std::fs::copy(env!("CARGO_BIN_EXE_serve"), &serve).unwrap();
    std::fs::set_permissions(&serve, std::fs::Permissions::from_mode(0o755)).unwrap();
    run(&mut Command::new("sync"));

    // Where `"hello":7592` of the embedded tokenizer.json lies in the executable, and in the image.
    let (placement, entries) = bundle_of(&serve);
    let tokenizer = entries.iter().find(|e| e.name == "tokenizer.json").unwrap();
    let tokenizer_bytes = read_at(
        &serve,
        placement.offset + tokenizer.offset,
        tokenizer.len as usize,
    );
    let in_tokenizer = only_offset(&tokenizer_bytes, ORIGINAL);
    let in_serve = placement.offset + tokenizer.offset + in_tokenizer as u64;
    let context = &tokenizer_bytes[in_tokenizer - 40..in_tokenizer + 52];
    // And the row of "hello" (7592) in the word-embedding table: 384 f32.
    let weights = entries
        .iter()
        .find(|e| e.name == "model.safetensors")
        .unwrap();
    let weight_bytes = read_at(
        &serve,
        placement.offset + weights.offset,
        weights.len as usize,
    );
    let (table, _) = tensor_range(&weight_bytes, "embeddings.word_embeddings.weight");
    let row = &weight_bytes[table + 7592 * 1536..table + 7593 * 1536];
    let image_bytes = std::fs::read(&image).unwrap();
    let in_image = (only_offset(&image_bytes, context) + 40) as u64;
    let row_in_image = only_offset(&image_bytes, row) as u64;
    drop(image_bytes);
    drop(weight_bytes);

    let mut child = Command::new(&serve)
        .args(["--log-format", "json", "--host", "127.0.0.1", "--port", "0"])
        .arg("--allow-unpinned")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group, so the attack can stop the supervisor and the forked server.
        .process_group(0)
        .spawn()
        .expect("start serve from the mounted image");
    let group = -(child.id() as i32);
    let stderr = child.stderr.take().unwrap();
    let _running = Running(child);
    let (events, received) = mpsc::channel();
    let attack_image = image.clone();
    let attack_serve = serve.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if event["message"] == "bundle verified" {
                // The attack, with the server stopped so that it cannot load before the bytes
                // changed (without the stop, the old code won this race most of the time; with
                // it, the code before issue 11 answered 2088 every time): new bytes in the
                // backing store, the file's cached pages gone.
                // SAFETY: kill on our own child's process group.
                unsafe { libc::kill(group, libc::SIGSTOP) };
                let backing = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&attack_image)
                    .unwrap();
                backing.write_all_at(REPLACED, in_image).unwrap();
                backing.write_all_at(&[0x3f; 1536], row_in_image).unwrap();
                backing.sync_all().unwrap();
                evict(&attack_serve);
                // SAFETY: as above.
                unsafe { libc::kill(group, libc::SIGCONT) };
                let _ = events.send(("attacked".to_string(), String::new()));
            }
            if event["message"] == "bound" {
                let address = event["address"].as_str().unwrap_or_default().to_string();
                let _ = events.send(("bound".to_string(), address));
            }
            if event["message"] == "ready" {
                let _ = events.send(("ready".to_string(), String::new()));
            }
        }
    });
    let mut address = String::new();
    let mut attacked = false;
    loop {
        let (what, value) = received
            .recv_timeout(Duration::from_secs(60))
            .expect("serve did not log attacked/bound/ready within 60 s");
        match what.as_str() {
            "attacked" => attacked = true,
            "bound" => address = value,
            _ => break,
        }
    }
    assert!(attacked, "the attack ran after \"bundle verified\"");

    // The executable as the kernel now reads it holds the attacker's bytes...
    evict(&serve);
    assert_eq!(read_at(&serve, in_serve, REPLACED.len()), REPLACED);
    // ... but the server tokenizes with what it verified: [CLS] hello [SEP].
    let port = address.rsplit(':').next().unwrap();
    let ids = tokenize_hello(&format!("http://127.0.0.1:{port}"));
    assert_eq!(
        ids,
        vec![101, 7592, 102],
        "the loaded tokenizer changed after verification"
    );
    // The table page holding "hello" was given back after loading; read again, it no longer
    // matches its verified hash: refused, with a line that says why.
    let base = format!("http://127.0.0.1:{port}");
    let (status, body) = embed(&base, "hello");
    assert_eq!(
        status, "500",
        "embedding with a changed row must be refused: {body}"
    );
    assert!(
        body.contains("changed after they were verified"),
        "the refusal says why: {body}"
    );
    // Rows whose pages did not change still serve.
    let (status, body) = embed(&base, "warm up");
    assert_eq!(status, "200", "{body}");
}
