//! `seal pin` on every family fixture (tests/data/families, laid out as Hugging Face snapshots):
//! the model.toml it writes names the right family, task, pooling and normalisation, pins the
//! files' sizes and digests, and builds: sealed from those pins and loaded as `serve` loads it,
//! the embedding fixtures' pooled vectors equal the sentence-transformers reference, so a wrong
//! pooling or normalisation guess fails here. Snapshots `serve` cannot run are refused with a
//! message saying what to do, exit code 2.

mod common;

use common::binary;
use common::families::{self, floats};
use sealserve::manifest::sha256_hex;
use sealserve::seal::pin::{self, PinError, PinOptions};
use sealserve::spec::{Family, FileRole, Pooling, Task};
use serde_json::Value;
use std::path::Path;

const REVISION: &str = "0123456789abcdef0123456789abcdef01234567";

fn options(fixture: &str) -> PinOptions {
    PinOptions {
        repo: format!("test/{fixture}"),
        revision: REVISION.into(),
        ..PinOptions::default()
    }
}

/// What `seal pin` must detect for each fixture (tests/data/families/README.md's table).
const EXPECTED: &[(&str, Family, Task, Pooling, bool)] = &[
    ("bert", Family::Bert, Task::Embed, Pooling::Mean, true),
    (
        "distilbert",
        Family::DistilBert,
        Task::Embed,
        Pooling::Mean,
        true,
    ),
    ("mpnet", Family::MpNet, Task::Embed, Pooling::Mean, true),
    (
        "xlm-roberta",
        Family::XlmRoberta,
        Task::Embed,
        Pooling::Cls,
        true,
    ),
    (
        "modernbert",
        Family::ModernBert,
        Task::Embed,
        Pooling::Mean,
        true,
    ),
    (
        "qwen3",
        Family::Qwen3,
        Task::Embed,
        Pooling::LastToken,
        true,
    ),
    (
        "qwen2",
        Family::Qwen2,
        Task::Embed,
        Pooling::LastToken,
        true,
    ),
    ("gte", Family::Gte, Task::Embed, Pooling::Cls, true),
    (
        "nomic-bert",
        Family::NomicBert,
        Task::Embed,
        Pooling::Mean,
        true,
    ),
    (
        "bert-classifier",
        Family::Bert,
        Task::Classify,
        Pooling::Cls,
        false,
    ),
    (
        "distilbert-classifier",
        Family::DistilBert,
        Task::Classify,
        Pooling::Cls,
        false,
    ),
    (
        "mpnet-classifier",
        Family::MpNet,
        Task::Classify,
        Pooling::Cls,
        false,
    ),
    (
        "modernbert-classifier",
        Family::ModernBert,
        Task::Classify,
        Pooling::Cls,
        false,
    ),
    (
        "qwen3-classifier",
        Family::Qwen3,
        Task::Classify,
        Pooling::Cls,
        false,
    ),
    (
        "bert-reranker",
        Family::Bert,
        Task::Rerank,
        Pooling::Cls,
        false,
    ),
    (
        "xlm-roberta-reranker",
        Family::XlmRoberta,
        Task::Rerank,
        Pooling::Cls,
        false,
    ),
    (
        "gte-reranker",
        Family::Gte,
        Task::Rerank,
        Pooling::Cls,
        false,
    ),
    (
        "bert-splade",
        Family::Bert,
        Task::SparseEmbed,
        Pooling::Cls,
        false,
    ),
];

/// Seals the fixture's files under the pinned spec, loads it on CPU and, for embedding models,
/// checks the pooled (and, as pinned, normalised) vectors against the reference.
fn builds_and_embeds_like_the_reference(fixture: &str, spec: &sealserve::spec::ModelSpec) {
    let dir = families::dir(fixture);
    let bytes: Vec<(String, FileRole, Vec<u8>)> = spec
        .files
        .iter()
        .map(|f| (f.name.clone(), f.role, families::read(fixture, &f.name)))
        .collect();
    let files: Vec<(&str, FileRole, &[u8])> = bytes
        .iter()
        .map(|(name, role, b)| (name.as_str(), *role, b.as_slice()))
        .collect();
    let (sealed, _key) = common::tiny::seal(spec, &files, true);
    let verified = common::verify_static(&sealed);
    let loaded = families::load(&verified)
        .unwrap_or_else(|e| panic!("{fixture}: the pinned model.toml does not load: {e}"));
    assert_eq!(loaded.info.task, spec.model.task, "{fixture}");
    assert_eq!(loaded.info.max_input_tokens, families::MAX_SEQ, "{fixture}");
    if spec.model.task != Task::Embed {
        return;
    }
    let reference = families::reference(fixture);
    let texts: Vec<&str> = reference["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .map(|i| i["text"].as_str().expect("text"))
        .collect();
    let ids: Vec<Vec<u32>> = loaded
        .tokenizer
        .encode(&texts, true)
        .expect("tokenize")
        .into_iter()
        .map(|e| e.ids)
        .collect();
    let pooled = loaded.embedder.embed(&ids).expect("embed");
    for (i, (got, want)) in pooled
        .iter()
        .zip(reference["embeddings"].as_array().expect("embeddings"))
        .enumerate()
    {
        let norm = if spec.model.normalize {
            got.iter().map(|v| v * v).sum::<f32>().sqrt()
        } else {
            1.0
        };
        let got: Vec<f32> = got.iter().map(|v| v / norm).collect();
        let diff = common::max_abs_diff(&got, &floats(want));
        assert!(
            diff <= 1e-5,
            "{fixture} input {i}: pinned pooling {} / normalize {} give {diff:e} from {}",
            spec.model.pooling,
            spec.model.normalize,
            dir.display()
        );
    }
}

#[test]
fn every_fixture_pins_to_a_model_toml_that_builds() {
    for (fixture, family, task, pooling, normalize) in EXPECTED {
        let dir = families::dir(fixture);
        let pinned = pin::pin(&dir, &options(fixture)).unwrap_or_else(|e| panic!("{fixture}: {e}"));
        let model = &pinned.spec.model;
        assert_eq!(
            (model.family, model.task, model.pooling, model.normalize),
            (*family, *task, *pooling, *normalize),
            "{fixture}"
        );
        assert_eq!(model.max_seq_length, families::MAX_SEQ, "{fixture}");
        assert_eq!(model.revision, REVISION);
        for file in &pinned.spec.files {
            let bytes = families::read(fixture, &file.name);
            assert_eq!(file.size, bytes.len() as u64, "{fixture} {}", file.name);
            assert_eq!(file.sha256, sha256_hex(&bytes), "{fixture} {}", file.name);
        }
        builds_and_embeds_like_the_reference(fixture, &pinned.spec);
    }
}

#[test]
fn prompts_come_from_config_sentence_transformers() {
    let pinned = pin::pin(&families::dir("qwen3"), &options("qwen3")).expect("pin");
    let reference = families::reference("qwen3");
    assert_eq!(
        pinned.spec.model.prompts.get("query").map(String::as_str),
        reference["prompts"]["query"].as_str()
    );
    assert_eq!(pinned.spec.model.default_prompt_name, None);
    assert!(pinned.toml.contains("[model.prompts]"), "{}", pinned.toml);
}

/// The `seal` binary writes what the library pins, refuses to overwrite, and derives repo and
/// revision from a hub-cache snapshot path.
#[test]
fn the_seal_command_writes_the_model_toml() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let out = scratch.path().join("models/bert-reranker/model.toml");
    let dir = families::dir("bert-reranker");
    let args = [
        "pin",
        dir.to_str().expect("utf-8 path"),
        "--repo",
        "test/bert-reranker",
        "--revision",
        REVISION,
        "--out",
        out.to_str().expect("utf-8 path"),
    ];
    let output = binary::seal(&args);
    assert!(output.status.success(), "{}", binary::text(&output.stderr));
    let written = std::fs::read_to_string(&out).expect("model.toml written");
    let pinned = pin::pin(&dir, &options("bert-reranker")).expect("pin");
    assert_eq!(written, pinned.toml);
    assert!(written.contains("task = \"rerank\""), "{written}");
    let again = binary::seal(&args);
    let (code, line) = binary::outcome(&again);
    assert_eq!(code, Some(2), "{line}");
    assert!(line.contains("--force"), "{line}");

    // A hub-cache layout names repo and revision itself.
    let snapshot = scratch
        .path()
        .join("hub/models--org--tiny-reranker/snapshots")
        .join(REVISION);
    copy_dir(&dir, &snapshot);
    let out = scratch.path().join("cached.toml");
    let output = binary::seal(&[
        "pin",
        snapshot.to_str().expect("utf-8 path"),
        "--out",
        out.to_str().expect("utf-8 path"),
    ]);
    assert!(output.status.success(), "{}", binary::text(&output.stderr));
    let text = std::fs::read_to_string(&out).expect("written");
    let parsed = sealserve::spec::ModelSpec::parse(&text, "cached.toml").expect("valid");
    assert_eq!(parsed.model.id, "org/tiny-reranker");
    assert_eq!(parsed.model.revision, REVISION);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("list") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// A copy of a fixture with one change, pinned: the error it gets.
fn refusal(fixture: &str, change: impl FnOnce(&Path)) -> PinError {
    let scratch = tempfile::tempdir().expect("temp dir");
    let dir = scratch.path().join("snapshot");
    copy_dir(&families::dir(fixture), &dir);
    change(&dir);
    match pin::pin(&dir, &options(fixture)) {
        Ok(pinned) => panic!("{fixture}: pinned anyway:\n{}", pinned.toml),
        Err(error) => error,
    }
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut value: Value =
        serde_json::from_slice(&std::fs::read(path).expect("read")).expect("JSON");
    edit(&mut value);
    std::fs::write(path, serde_json::to_vec(&value).expect("JSON")).expect("write");
}

#[test]
fn snapshots_serve_cannot_run_are_refused_with_advice() {
    let unknown = refusal("bert", |dir| {
        edit_json(&dir.join("config.json"), |c| c["model_type"] = "t5".into())
    });
    let text = unknown.to_string();
    assert!(matches!(unknown, PinError::Unsupported(_)), "{text}");
    assert!(
        text.contains("\"t5\"") && text.contains("modernbert"),
        "{text}"
    );

    let pickle = refusal("bert", |dir| {
        std::fs::rename(dir.join("model.safetensors"), dir.join("pytorch_model.bin")).expect("mv")
    });
    assert!(
        pickle.to_string().contains("convert them to safetensors"),
        "{pickle}"
    );

    let dense = refusal("bert", |dir| {
        edit_json(&dir.join("modules.json"), |m| {
            m.as_array_mut().expect("modules").push(serde_json::json!({
                "idx": 3, "name": "3", "path": "3_Dense",
                "type": "sentence_transformers.models.Dense"
            }))
        })
    });
    assert!(dense.to_string().contains("Dense"), "{dense}");

    let max_pooling = refusal("bert", |dir| {
        edit_json(&dir.join("1_Pooling/config.json"), |p| {
            p["pooling_mode"] = "max".into()
        })
    });
    assert!(
        max_pooling.to_string().contains("mean, cls or last token"),
        "{max_pooling}"
    );

    let no_modules = refusal("bert", |dir| {
        std::fs::remove_file(dir.join("modules.json")).expect("rm")
    });
    assert!(no_modules.to_string().contains("--pooling"), "{no_modules}");

    let branch = pin::pin(
        &families::dir("bert"),
        &PinOptions {
            revision: "main".into(),
            ..options("bert")
        },
    )
    .expect_err("a branch is not a revision");
    assert!(branch.to_string().contains("40-hex"), "{branch}");

    // The old sentence-transformers Pooling format reads the same.
    let scratch = tempfile::tempdir().expect("temp dir");
    let dir = scratch.path().join("snapshot");
    copy_dir(&families::dir("xlm-roberta"), &dir);
    std::fs::write(
        dir.join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension": 64, "pooling_mode_cls_token": true,
            "pooling_mode_mean_tokens": false, "pooling_mode_max_tokens": false,
            "pooling_mode_mean_sqrt_len_tokens": false}"#,
    )
    .expect("write");
    let pinned = pin::pin(&dir, &options("xlm-roberta")).expect("old Pooling format");
    assert_eq!(pinned.spec.model.pooling, Pooling::Cls);
}
