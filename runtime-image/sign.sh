#!/usr/bin/env bash
# Sign, attest and verify what sealserve ships, with cosign: the container images (by digest,
# from the build's own metadata, never a tag), their SBOM and SLSA provenance, and the released
# `serve` executable.
set -euo pipefail

PROG=${0##*/}

usage() {
  cat <<EOF
Usage:
  $PROG image (--metadata-file build.json | --digest-file FILE REPO | REPO@sha256:...) \\
        --sbom FILE --provenance FILE [KEY OPTIONS]
      Sign the image digest the build recorded (docker buildx --metadata-file: image.name +
      containerimage.digest; podman push --digestfile) in cosign's v2 signature format (the
      .sig tag NeuVector reads), attest the CycloneDX SBOM (--type cyclonedx) and the SLSA v1
      provenance predicate (--type slsaprovenance1), then verify all three. A tag is refused:
      signing what a tag points to after the push races with anyone who can push that tag.
      Prints REPO@sha256:... on its last line.
  $PROG provenance (--metadata-file build.json | --digest-file FILE REPO | REPO@sha256:...) \\
        --dockerfile PATH [--builder-id URI] [--build-arg K=V ...]
      Write an SLSA v1 provenance predicate for that image to stdout (source commit, Dockerfile,
      build arguments, base images from the Dockerfile's FROM lines).
  $PROG verify-image REPO@sha256:... [KEY OPTIONS]
      cosign verify plus verify-attestation (cyclonedx, slsaprovenance1).
  $PROG zarf-args REPO@sha256:...
      Print the zarf package create --set arguments: IMAGE and cosign's signature and
      attestation tags for it (they travel in the package as images of their own).
  $PROG verify-binary DIR --release-pub FILE [--model-pub FILE]
      Check a downloaded standalone release before running it: SHA256SUMS against
      SHA256SUMS.sig (cosign verify-blob) and SHA256SUMS.minisig (minisign, when the .pub is
      there), every file listed in SHA256SUMS (sha256sum -c), serve against serve.sig and
      serve.minisig; then seal verify on serve, pinned to the model's signing key (--model-pub;
      default: the release key, which scripts/release-sign uses for both). DIR holds serve,
      serve.sig, serve.minisig, SHA256SUMS, SHA256SUMS.sig, SHA256SUMS.minisig; --release-pub
      is the release public key (PEM; a .minisign file beside it, if present, is used by
      minisign). Both keys come from somewhere other than the download.

Key options:
  --key REF             signing key: a cosign key file, or a KMS/HSM reference cosign accepts
                        (awskms://, azurekms://, gcpkms://, hashivault://, k8s://, pkcs11:...).
  --pub REF             verification key (a public key file or the same KMS/HSM reference).
                        Required with a key FILE: the verification key is never taken from the
                        file lying next to the private key. With a KMS/HSM --key and no --pub,
                        the same reference verifies.
  --keyless             Sigstore keyless (Fulcio + Rekor with an OIDC identity); verify with
                        --identity and --issuer.
  --identity ID, --issuer URL
                        expected signer identity and OIDC issuer (keyless verification).
  --tlog                with --key: also upload to the transparency log (default off, for
                        air-gapped registries; verification then skips the log lookup).
  --rekor-url URL       a Rekor you run (implies --tlog).

Environment: COSIGN (default cosign), SEAL (default: seal, else target/release/seal),
MINISIGN (default minisign), COSIGN_PASSWORD (key password, read by cosign).
cosign v2 and v3 are supported; an unknown cosign major version is refused.

Examples:
  docker buildx build -f runtime-image/Dockerfile --push --metadata-file build.json -t REPO:0.1.0 .
  $PROG provenance --metadata-file build.json --dockerfile runtime-image/Dockerfile > provenance.json
  $PROG image --metadata-file build.json --sbom image.cdx.json --provenance provenance.json \\
    --key awskms:///alias/sealserve-release
  $PROG verify-image REPO@sha256:... --pub cosign.pub
  $PROG verify-binary ./sealserve-0.1.0 --release-pub release.pub
EOF
}

die() {
  echo "$PROG: $*" >&2
  exit 1
}

COSIGN=${COSIGN:-cosign}
COSIGN_MAJOR=""
MINISIGN=${MINISIGN:-minisign}
SEAL=${SEAL:-}
MODE=""
KEY=""
PUB=""
IDENTITY=""
ISSUER=""
TLOG=0
REKOR_URL=""
METADATA_FILE=""
DIGEST_FILE=""
SBOM=""
PROVENANCE=""
DOCKERFILE=""
BUILDER_ID=""
RELEASE_PUB=""
MODEL_PUB=""
BUILD_ARGS=()
POSITIONAL=()

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

# A KMS/HSM reference, as cosign's --key accepts it: never a file on disk.
is_key_ref() {
  [[ "$1" == *://* || "$1" == pkcs11:* ]]
}

cosign_major() {
  local major
  major=$("$COSIGN" version 2>/dev/null | sed -n 's/^GitVersion:[[:space:]]*v\{0,1\}\([0-9][0-9]*\).*/\1/p' | head -n1)
  case "$major" in
    2 | 3) printf '%s' "$major" ;;
    *) die "cannot tell cosign's major version (got '${major}'); v2 or v3 is required" ;;
  esac
}

# cosign v3 writes Sigstore bundles as OCI referrers by default; NeuVector, and older Kyverno and
# policy-controller releases, only find the v2-format .sig/.att tags.
legacy_format_flags() {
  if [[ "$COSIGN_MAJOR" == 3 ]]; then
    printf '%s\n' --new-bundle-format=false --use-signing-config=false
  fi
}

# REPO@sha256:<64 hex> from the build's record, never from a registry lookup of a tag.
image_ref() {
  local ref="" repo digest
  if [[ -n "$METADATA_FILE" ]]; then
    [[ -f "$METADATA_FILE" ]] || die "--metadata-file $METADATA_FILE: no such file"
    need python3
    ref=$(python3 - "$METADATA_FILE" <<'PY'
import json, sys
meta = json.load(open(sys.argv[1]))
digest = meta.get("containerimage.digest", "")
names = [n for n in meta.get("image.name", "").split(",") if n]
if not digest or not names:
    sys.exit("no containerimage.digest / image.name in the metadata file (docker buildx --push --metadata-file)")
name = names[0]
if "@" in name:
    name = name.split("@", 1)[0]
last = name.rsplit("/", 1)[-1]
if ":" in last:
    name = name[: len(name) - len(last)] + last.split(":", 1)[0]
print(name + "@" + digest)
PY
    ) || die "cannot read the image digest from $METADATA_FILE"
  elif [[ -n "$DIGEST_FILE" ]]; then
    [[ ${#POSITIONAL[@]} -eq 1 ]] || die "--digest-file needs the repository (REPO, no tag) as its argument"
    [[ -f "$DIGEST_FILE" ]] || die "--digest-file $DIGEST_FILE: no such file"
    digest=$(tr -d '[:space:]' <"$DIGEST_FILE")
    repo=${POSITIONAL[0]}
    [[ "${repo##*/}" != *:* ]] || die "$repo: give the repository without a tag with --digest-file"
    ref="$repo@$digest"
  else
    [[ ${#POSITIONAL[@]} -eq 1 ]] || die "name the image: --metadata-file FILE, --digest-file FILE REPO, or REPO@sha256:..."
    ref=${POSITIONAL[0]}
  fi
  [[ "$ref" =~ ^[^@[:space:]]+@sha256:[0-9a-f]{64}$ ]] ||
    die "$ref is not REPO@sha256:<digest>: refusing to sign or verify a tag (take the digest from the build: --metadata-file or --digest-file)"
  printf '%s' "$ref"
}

# Arguments that select the signing key.
sign_key_args() {
  if [[ "$MODE" == keyless ]]; then
    return
  fi
  [[ -n "$KEY" ]] || die "signing needs --key FILE|KMS-REF or --keyless"
  if ! is_key_ref "$KEY"; then
    [[ -f "$KEY" ]] || die "--key $KEY: no such file (or give a KMS/HSM reference)"
  fi
  local tlog=false
  [[ "$TLOG" == 1 ]] && tlog=true
  printf '%s\n' --key "$KEY" "--tlog-upload=$tlog"
}

verify_key() {
  if [[ -n "$PUB" ]]; then
    printf '%s' "$PUB"
  elif [[ -n "$KEY" ]] && is_key_ref "$KEY"; then
    printf '%s' "$KEY"
  else
    die "verification needs --pub FILE|KMS-REF (never the file beside the private key), or --keyless"
  fi
}

# Arguments that select the verification key or identity.
verify_args() {
  if [[ "$MODE" == keyless ]]; then
    [[ -n "$IDENTITY" && -n "$ISSUER" ]] || die "keyless verification needs --identity and --issuer"
    printf '%s\n' --certificate-identity "$IDENTITY" --certificate-oidc-issuer "$ISSUER"
    [[ -n "$REKOR_URL" ]] && printf '%s\n' --rekor-url "$REKOR_URL"
  else
    printf '%s\n' --key "$(verify_key)"
    if [[ "$TLOG" == 1 ]]; then
      [[ -n "$REKOR_URL" ]] && printf '%s\n' --rekor-url "$REKOR_URL"
    else
      printf '%s\n' --insecure-ignore-tlog=true
    fi
  fi
  return 0
}

sign_image() {
  local ref
  need "$COSIGN"
  ref=$(image_ref)
  [[ -f "$SBOM" ]] || die "--sbom FILE (CycloneDX JSON of the image) is required"
  [[ -f "$PROVENANCE" ]] || die "--provenance FILE (SLSA v1 predicate; see '$PROG provenance') is required"
  # Fail before signing anything when the result could not be verified.
  [[ "$MODE" == keyless ]] || verify_key >/dev/null
  COSIGN_MAJOR=$(cosign_major)
  local -a legacy keyargs rekor=()
  mapfile -t legacy < <(legacy_format_flags)
  mapfile -t keyargs < <(sign_key_args)
  [[ -n "$REKOR_URL" ]] && rekor=(--rekor-url "$REKOR_URL")
  echo "$PROG: signing $ref" >&2
  "$COSIGN" sign --yes "${keyargs[@]}" "${legacy[@]}" "${rekor[@]}" "$ref"
  echo "$PROG: attesting the SBOM ($SBOM) and provenance ($PROVENANCE) of $ref" >&2
  "$COSIGN" attest --yes "${keyargs[@]}" "${legacy[@]}" "${rekor[@]}" \
    --type cyclonedx --predicate "$SBOM" "$ref"
  "$COSIGN" attest --yes "${keyargs[@]}" "${legacy[@]}" "${rekor[@]}" \
    --type slsaprovenance1 --predicate "$PROVENANCE" "$ref"
  if [[ "$MODE" == keyless && (-z "$IDENTITY" || -z "$ISSUER") ]]; then
    echo "$PROG: signed; verify with: $PROG verify-image $ref --keyless --identity ID --issuer URL" >&2
  else
    verify_image "$ref"
  fi
  echo "$ref"
}

verify_image() {
  local ref=${1:-}
  need "$COSIGN"
  [[ -n "$ref" ]] || ref=$(image_ref)
  local -a args
  mapfile -t args < <(verify_args)
  "$COSIGN" verify "${args[@]}" "$ref" >/dev/null
  "$COSIGN" verify-attestation "${args[@]}" --type cyclonedx "$ref" >/dev/null
  "$COSIGN" verify-attestation "${args[@]}" --type slsaprovenance1 "$ref" >/dev/null
  echo "$PROG: verified the signature, SBOM and provenance attestations of $ref" >&2
}

provenance() {
  local ref
  ref=$(image_ref)
  [[ -f "$DOCKERFILE" ]] || die "--dockerfile PATH is required"
  need python3
  local commit="" remote=""
  commit=$(git rev-parse HEAD 2>/dev/null || true)
  remote=$(git config --get remote.origin.url 2>/dev/null || true)
  python3 - "$ref" "$DOCKERFILE" "${BUILDER_ID:-${SEALSERVE_BUILDER_ID:-local}}" "$commit" "$remote" \
    "${BUILD_ARGS[@]}" <<'PY'
import datetime, json, re, sys
ref, dockerfile, builder, commit, remote, *build_args = sys.argv[1:]
args = dict(a.split("=", 1) for a in build_args)
text = open(dockerfile).read()
defaults = dict(re.findall(r"^ARG\s+([A-Za-z_][A-Za-z0-9_]*)=(\S+)", text, re.M))
defaults.update(args)
deps = []
if commit:
    deps.append({"uri": "git+" + (remote or "unknown"), "digest": {"gitCommit": commit}})
for image in re.findall(r"^FROM\s+(?:--\S+\s+)*(\S+)", text, re.M):
    resolved = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: defaults.get(m.group(1), m.group(0)), image)
    if "@sha256:" in resolved:
        name, digest = resolved.split("@sha256:", 1)
        deps.append({"uri": "pkg:docker/" + name, "digest": {"sha256": digest}})
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
predicate = {
    "buildDefinition": {
        "buildType": "urn:sealserve:buildtype:dockerfile:v1",
        "externalParameters": {"dockerfile": dockerfile, "buildArgs": args, "image": ref},
        "internalParameters": {},
        "resolvedDependencies": deps,
    },
    "runDetails": {"builder": {"id": builder}, "metadata": {"finishedOn": now}},
}
json.dump(predicate, sys.stdout, indent=2)
print()
PY
}

zarf_args() {
  local ref digest repo
  ref=$(image_ref)
  repo=${ref%@*}
  digest=${ref#*@sha256:}
  printf -- '--set IMAGE=%s --set SIGNATURE=%s:sha256-%s.sig --set ATTESTATIONS=%s:sha256-%s.att\n' \
    "$ref" "$repo" "$digest" "$repo" "$digest"
}

# The standalone release (scripts/release-sign on branch trust): SHA256SUMS and serve are each
# signed twice (raw Ed25519, which cosign verify-blob and openssl check, and minisign).
verify_binary() {
  local dir=$1
  [[ -d "$dir" ]] || die "$dir: no such directory"
  [[ -n "$RELEASE_PUB" ]] || die "verify-binary needs --release-pub FILE (the release public key, obtained out of band)"
  [[ -f "$RELEASE_PUB" ]] || die "--release-pub $RELEASE_PUB: no such file"
  local name
  for name in serve serve.sig serve.minisig SHA256SUMS SHA256SUMS.sig SHA256SUMS.minisig; do
    [[ -f "$dir/$name" ]] || die "$dir/$name is missing"
  done
  need "$COSIGN"
  "$COSIGN" verify-blob --key "$RELEASE_PUB" --signature "$dir/SHA256SUMS.sig" \
    --insecure-ignore-tlog=true "$dir/SHA256SUMS"
  "$COSIGN" verify-blob --key "$RELEASE_PUB" --signature "$dir/serve.sig" \
    --insecure-ignore-tlog=true "$dir/serve"
  local minisign_pub="${RELEASE_PUB%.pub}.pub.minisign"
  if [[ -f "$minisign_pub" ]]; then
    need "$MINISIGN"
    "$MINISIGN" -V -q -p "$minisign_pub" -m "$dir/SHA256SUMS" -x "$dir/SHA256SUMS.minisig"
    "$MINISIGN" -V -q -p "$minisign_pub" -m "$dir/serve" -x "$dir/serve.minisig"
  fi
  (cd "$dir" && sha256sum --check --strict SHA256SUMS)
  grep -Eq '^[0-9a-f]{64} [ *]serve$' "$dir/SHA256SUMS" || die "$dir/SHA256SUMS does not list serve"
  # Pinned: seal verify (like serve) refuses to check a bundle against no key at all.
  local model_pub=${MODEL_PUB:-$RELEASE_PUB}
  [[ -f "$model_pub" ]] || die "--model-pub $model_pub: no such file"
  seal_cmd verify "$dir/serve" --trusted-key "$model_pub"
  echo "$PROG: $dir/serve: release signature, SHA256SUMS and embedded bundle verified" >&2
}

[[ $# -ge 1 ]] || {
  usage >&2
  exit 2
}
CMD=$1
shift
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help)
      usage
      exit 0
      ;;
    --key)
      KEY=${2:?--key needs a file or a KMS/HSM reference}
      MODE=key
      shift 2
      ;;
    --pub)
      PUB=${2:?--pub needs a file or a KMS/HSM reference}
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
    --metadata-file)
      METADATA_FILE=${2:?--metadata-file needs a file}
      shift 2
      ;;
    --digest-file)
      DIGEST_FILE=${2:?--digest-file needs a file}
      shift 2
      ;;
    --sbom)
      SBOM=${2:?--sbom needs a file}
      shift 2
      ;;
    --provenance)
      PROVENANCE=${2:?--provenance needs a file}
      shift 2
      ;;
    --dockerfile)
      DOCKERFILE=${2:?--dockerfile needs a path}
      shift 2
      ;;
    --builder-id)
      BUILDER_ID=${2:?--builder-id needs a URI}
      shift 2
      ;;
    --build-arg)
      BUILD_ARGS+=("${2:?--build-arg needs K=V}")
      shift 2
      ;;
    --release-pub)
      RELEASE_PUB=${2:?--release-pub needs a file}
      shift 2
      ;;
    --model-pub)
      MODEL_PUB=${2:?--model-pub needs a file}
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
  image)
    [[ -n "$MODE" ]] || die "image needs --key FILE|KMS-REF or --keyless"
    sign_image
    ;;
  verify-image)
    [[ -n "$MODE" ]] || die "verify-image needs --pub FILE|KMS-REF or --keyless"
    verify_image
    ;;
  provenance)
    provenance
    ;;
  zarf-args)
    zarf_args
    ;;
  verify-binary)
    [[ ${#POSITIONAL[@]} -eq 1 ]] || die "verify-binary needs exactly one DIR"
    verify_binary "${POSITIONAL[0]}"
    ;;
  *)
    usage >&2
    die "unknown command $CMD"
    ;;
esac
