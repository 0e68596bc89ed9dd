#!/usr/bin/env bash
# Sign and verify what sealserve ships: the model MANIFEST embedded in the binary, and the
# container images, by digest, with cosign (a key pair, or keyless through Sigstore/OIDC).
set -euo pipefail

PROG=${0##*/}

usage() {
  cat <<EOF
Usage:
  $PROG manifest [--model-dir DIR] [--model-key FILE] [--out DIR] [KEY OPTIONS]
      seal manifest DIR > OUT/MANIFEST; seal sign (ed25519, writes MANIFEST.sig and
      MANIFEST.minisig); check MANIFEST.sig with cosign verify-blob and the model's public key.
      With --keyless also records MANIFEST in the transparency log (MANIFEST.sigstore.json).
  $PROG image IMAGE [KEY OPTIONS]
      Resolve IMAGE to its digest and cosign sign REPO@sha256:... in the cosign v2 signature
      format (a .sig tag beside the image; NeuVector reads no other), then verify it.
  $PROG verify-image IMAGE [KEY OPTIONS]
      cosign verify REPO@sha256:... .
  $PROG verify-binary BINARY [--out DIR]
      seal verify BINARY, then seal export BINARY DIR (default: ./out) and cosign verify-blob
      the exported MANIFEST against the exported public key.

Key options (one of):
  --key FILE            cosign private key for signing (cosign generate-key-pair); for the
                        verify steps the matching public key is FILE with .key replaced by .pub,
                        or --pub FILE.
  --pub FILE            public key for verification.
  --keyless             Sigstore keyless: sign with an OIDC identity (Fulcio + Rekor);
                        verify with --identity and --issuer.
  --identity ID         expected signer identity (keyless verify), e.g. release@example.com.
  --issuer URL          expected OIDC issuer (keyless verify).
  --tlog                with --key: also upload to the transparency log (default: off, for
                        air-gapped registries; verification then uses --insecure-ignore-tlog).
  --rekor-url URL       private Rekor instance (implies --tlog).

Environment: COSIGN (default: cosign), SEAL (default: seal, else target/release/seal),
COSIGN_PASSWORD (key password, read by cosign).

Examples:
  $PROG manifest --model-key keys/model.key
  $PROG image registry.example.internal/sealserve/serve:0.1.0 --key cosign.key
  $PROG image registry.example.internal/sealserve/serve:0.1.0 --keyless
  $PROG verify-image registry.example.internal/sealserve/serve:0.1.0 --pub cosign.pub
  $PROG verify-binary target/cuda/release/serve
EOF
}

die() {
  echo "$PROG: $*" >&2
  exit 1
}

COSIGN=${COSIGN:-cosign}
SEAL=${SEAL:-}
MODE=""
KEY=""
PUB=""
IDENTITY=""
ISSUER=""
TLOG=0
REKOR_URL=""
MODEL_DIR=models/all-MiniLM-L6-v2
MODEL_KEY=keys/model.key
MODEL_PUB=""
OUT=""

need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 not found in PATH"
}

seal_cmd() {
  if [[ -n "$SEAL" ]]; then
    "$SEAL" "$@"
  elif command -v seal >/dev/null 2>&1; then
    seal "$@"
  elif [[ -x target/release/seal ]]; then
    target/release/seal "$@"
  else
    die "seal not found (build it with: cargo build --release --bin seal)"
  fi
}

cosign_major() {
  "$COSIGN" version 2>/dev/null | sed -n 's/^GitVersion:[[:space:]]*v\{0,1\}\([0-9][0-9]*\).*/\1/p' | head -n1
}

# cosign v3 writes the new Sigstore bundle as an OCI referrer by default; NeuVector, and older
# Kyverno and policy-controller releases, only find the v2-format .sig tag.
legacy_format_flags() {
  local major
  major=$(cosign_major)
  if [[ -n "$major" && "$major" -ge 3 ]]; then
    printf '%s\n' --new-bundle-format=false --use-signing-config=false
  fi
}

pub_for_verify() {
  if [[ -n "$PUB" ]]; then
    printf '%s' "$PUB"
  elif [[ -n "$KEY" ]]; then
    printf '%s' "${KEY%.key}.pub"
  else
    die "verification needs --pub FILE (or --key FILE with FILE.pub beside it), or --keyless"
  fi
}

# REPO[:TAG|@DIGEST] -> REPO@sha256:...  Signing a tag would sign whatever the tag points at
# when cosign looks; the digest is what admission controllers pin.
resolve_digest() {
  local ref=$1 repo digest=""
  if [[ "$ref" == *@sha256:* ]]; then
    printf '%s' "$ref"
    return
  fi
  repo=$ref
  # Strip a tag (a ':' after the last '/'), not a registry port.
  if [[ "${ref##*/}" == *:* ]]; then
    repo=${ref%:*}
  fi
  if command -v crane >/dev/null 2>&1; then
    digest=$(crane digest "$ref")
  elif command -v skopeo >/dev/null 2>&1; then
    digest=$(skopeo inspect --format '{{.Digest}}' "docker://$ref")
  elif command -v docker >/dev/null 2>&1; then
    digest=$(docker buildx imagetools inspect "$ref" --format '{{json .Manifest.Digest}}' | tr -d '"')
  else
    die "cannot resolve $ref to a digest: install crane or skopeo, or pass REPO@sha256:..."
  fi
  [[ "$digest" == sha256:* ]] || die "could not resolve $ref to a digest (got '$digest')"
  printf '%s@%s' "$repo" "$digest"
}

sign_image() {
  local ref
  need "$COSIGN"
  ref=$(resolve_digest "$1")
  local -a args
  mapfile -t args < <(legacy_format_flags)
  if [[ "$MODE" == keyless ]]; then
    echo "$PROG: signing $ref (keyless)" >&2
    "$COSIGN" sign --yes "${args[@]}" ${REKOR_URL:+--rekor-url "$REKOR_URL"} "$ref"
  else
    [[ -f "$KEY" ]] || die "--key $KEY: no such file"
    local tlog=false
    [[ "$TLOG" == 1 ]] && tlog=true
    echo "$PROG: signing $ref with $KEY (tlog upload: $tlog)" >&2
    "$COSIGN" sign --yes --key "$KEY" --tlog-upload="$tlog" "${args[@]}" \
      ${REKOR_URL:+--rekor-url "$REKOR_URL"} "$ref"
  fi
  if [[ "$MODE" == keyless && ( -z "$IDENTITY" || -z "$ISSUER" ) ]]; then
    echo "$PROG: signed; verify with: $PROG verify-image $ref --keyless --identity ID --issuer URL" >&2
  else
    verify_image "$ref"
  fi
  echo "$ref"
}

verify_image() {
  local ref
  need "$COSIGN"
  ref=$(resolve_digest "$1")
  if [[ "$MODE" == keyless ]]; then
    [[ -n "$IDENTITY" && -n "$ISSUER" ]] || die "keyless verification needs --identity and --issuer"
    "$COSIGN" verify --certificate-identity "$IDENTITY" --certificate-oidc-issuer "$ISSUER" \
      ${REKOR_URL:+--rekor-url "$REKOR_URL"} "$ref" >/dev/null
  else
    local pub
    pub=$(pub_for_verify)
    if [[ "$TLOG" == 1 ]]; then
      "$COSIGN" verify --key "$pub" ${REKOR_URL:+--rekor-url "$REKOR_URL"} "$ref" >/dev/null
    else
      "$COSIGN" verify --key "$pub" --insecure-ignore-tlog=true "$ref" >/dev/null
    fi
  fi
  echo "$PROG: verified $ref" >&2
}

# The model MANIFEST is signed with the model's ed25519 key by seal (that signature is what
# serve checks at startup); cosign, minisign and openssl can all check it independently.
sign_manifest() {
  local out=${OUT:-.}
  local pub=${MODEL_PUB:-${MODEL_KEY%.key}.pub}
  [[ -d "$MODEL_DIR" ]] || die "--model-dir $MODEL_DIR: no such directory"
  [[ -f "$MODEL_KEY" ]] || die "--model-key $MODEL_KEY: no such file (seal keygen --out keys/)"
  mkdir -p "$out"
  seal_cmd manifest "$MODEL_DIR" >"$out/MANIFEST"
  seal_cmd sign --key "$MODEL_KEY" "$out/MANIFEST"
  [[ -f "$out/MANIFEST.sig" ]] || die "seal sign wrote no $out/MANIFEST.sig"
  if command -v "$COSIGN" >/dev/null 2>&1 && [[ -f "$pub" ]]; then
    "$COSIGN" verify-blob --key "$pub" --signature "$out/MANIFEST.sig" \
      --insecure-ignore-tlog=true "$out/MANIFEST"
  else
    echo "$PROG: cosign or $pub missing; skipped the cosign verify-blob cross-check" >&2
  fi
  if [[ "$MODE" == keyless ]]; then
    need "$COSIGN"
    "$COSIGN" sign-blob --yes --bundle "$out/MANIFEST.sigstore.json" \
      ${REKOR_URL:+--rekor-url "$REKOR_URL"} "$out/MANIFEST"
  fi
  cat <<EOF >&2
$PROG: $out/MANIFEST signed. Release build:
  SEALSERVE_SIGNATURE=$out/MANIFEST.sig SEALSERVE_PUBLIC_KEY=$pub cargo build --release
EOF
}

verify_binary() {
  local bin=$1 out=${OUT:-out}
  [[ -f "$bin" ]] || die "$bin: no such file"
  seal_cmd verify "$bin"
  seal_cmd export "$bin" "$out"
  if command -v "$COSIGN" >/dev/null 2>&1; then
    local pub=""
    for candidate in "$out/model.pub" "$out/MANIFEST.pub"; do
      [[ -f "$candidate" ]] && pub=$candidate && break
    done
    if [[ -n "$pub" && -f "$out/MANIFEST.sig" ]]; then
      "$COSIGN" verify-blob --key "$pub" --signature "$out/MANIFEST.sig" \
        --insecure-ignore-tlog=true "$out/MANIFEST"
    fi
  fi
}

[[ $# -ge 1 ]] || {
  usage >&2
  exit 2
}
CMD=$1
shift
POSITIONAL=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help)
      usage
      exit 0
      ;;
    --key)
      KEY=${2:?--key needs a file}
      MODE=key
      shift 2
      ;;
    --pub)
      PUB=${2:?--pub needs a file}
      [[ -z "$MODE" ]] && MODE=key
      shift 2
      ;;
    --keyless)
      MODE=keyless
      shift
      ;;
    --identity)
      IDENTITY=${2:?--identity needs a value}
      shift 2
      ;;
    --issuer)
      ISSUER=${2:?--issuer needs a URL}
      shift 2
      ;;
    --tlog)
      TLOG=1
      shift
      ;;
    --rekor-url)
      REKOR_URL=${2:?--rekor-url needs a URL}
      TLOG=1
      shift 2
      ;;
    --model-dir)
      MODEL_DIR=${2:?--model-dir needs a directory}
      shift 2
      ;;
    --model-key)
      MODEL_KEY=${2:?--model-key needs a file}
      shift 2
      ;;
    --model-pub)
      MODEL_PUB=${2:?--model-pub needs a file}
      shift 2
      ;;
    --out)
      OUT=${2:?--out needs a directory}
      shift 2
      ;;
    -*)
      die "unknown option $1 (see --help)"
      ;;
    *)
      POSITIONAL+=("$1")
      shift
      ;;
  esac
done

case "$CMD" in
  -h | --help | help)
    usage
    ;;
  manifest)
    sign_manifest
    ;;
  image)
    [[ ${#POSITIONAL[@]} -eq 1 ]] || die "image needs exactly one IMAGE"
    [[ -n "$MODE" ]] || die "image needs --key FILE or --keyless"
    sign_image "${POSITIONAL[0]}"
    ;;
  verify-image)
    [[ ${#POSITIONAL[@]} -eq 1 ]] || die "verify-image needs exactly one IMAGE"
    [[ -n "$MODE" ]] || die "verify-image needs --pub FILE, --key FILE or --keyless"
    verify_image "${POSITIONAL[0]}"
    ;;
  verify-binary)
    [[ ${#POSITIONAL[@]} -eq 1 ]] || die "verify-binary needs exactly one BINARY"
    verify_binary "${POSITIONAL[0]}"
    ;;
  *)
    usage >&2
    die "unknown command $CMD"
    ;;
esac
