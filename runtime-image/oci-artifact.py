#!/usr/bin/env python3
"""Push the standalone `serve` executable to an OCI registry as an artifact, and pull it back
by digest: for registries that hold only OCI content (Nexus, Artifactory, Harbor, Quay,
distribution), where a bare file has no other home next to the images.

    oci-artifact.py push REGISTRY/REPO:TAG serve [--insecure]
        prints REGISTRY/REPO@sha256:... (the manifest digest: sign and pin that, never the tag)
    oci-artifact.py pull REGISTRY/REPO@sha256:... OUTDIR [--insecure]
        fetches the manifest by digest, checks it hashes to that digest, and writes serve
        (mode 0755) into OUTDIR after checking its layer digest

The same with the `oras` CLI:
    oras push REGISTRY/REPO:TAG serve:application/vnd.sealserve.executable.v1+binary
    oras pull REGISTRY/REPO@sha256:...
and sign the digest with cosign like an image:
    cosign sign --key cosign.key REGISTRY/REPO@sha256:...
    cosign verify --key cosign.pub REGISTRY/REPO@sha256:...

Uses the oras Python SDK (PyPI `oras`); credentials come from the Docker config oras reads.
--insecure talks plain HTTP (a registry on 127.0.0.1 in tests).
"""

import hashlib
import json
import os
import sys

import oras.client

MEDIA_TYPE = "application/vnd.sealserve.executable.v1+binary"


def _client(insecure):
    return oras.client.OrasClient(insecure=insecure, tls_verify=not insecure)


def push(target, path, insecure):
    if "@" in target:
        sys.exit("push to a tag (REPO:TAG); the digest is what this prints")
    directory, name = os.path.split(os.path.abspath(path))
    os.chdir(directory)
    response = _client(insecure).push(
        target=target,
        files=["%s:%s" % (name, MEDIA_TYPE)],
        manifest_annotations={"org.opencontainers.image.title": "sealserve serve executable"},
        quiet=True,
    )
    digest = response.headers.get("Docker-Content-Digest", "")
    if not digest.startswith("sha256:"):
        sys.exit("the registry did not report the manifest digest")
    repository = target.rsplit(":", 1)[0] if ":" in target.rsplit("/", 1)[-1] else target
    print("%s@%s" % (repository, digest))


def pull(reference, outdir, insecure):
    repository, _, digest = reference.partition("@")
    if not digest.startswith("sha256:"):
        sys.exit("pull by digest: REPO@sha256:...")
    client = _client(insecure)
    container = client.get_container(reference)
    # The raw manifest bytes, to check them against the digest asked for.
    response = client.do_request(
        "%s://%s" % (client.prefix, container.manifest_url()),
        "GET",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    if response.status_code != 200:
        sys.exit("GET manifest %s: HTTP %d" % (reference, response.status_code))
    if hashlib.sha256(response.content).hexdigest() != digest[len("sha256:"):]:
        sys.exit("the manifest does not hash to %s" % digest)
    manifest = response.json()
    layers = [l for l in manifest.get("layers", []) if l.get("mediaType") == MEDIA_TYPE]
    if len(layers) != 1:
        sys.exit("%s is not a sealserve executable artifact: %s" % (reference, json.dumps(manifest)))
    os.makedirs(outdir, exist_ok=True)
    files = client.pull(target=reference, outdir=outdir)
    for path in files:
        with open(path, "rb") as handle:
            actual = "sha256:" + hashlib.sha256(handle.read()).hexdigest()
        if actual != layers[0]["digest"]:
            sys.exit("%s: content %s, manifest says %s" % (path, actual, layers[0]["digest"]))
        os.chmod(path, 0o755)
        print(path)


def main(argv):
    insecure = "--insecure" in argv
    args = [a for a in argv if a != "--insecure"]
    if len(args) == 3 and args[0] == "push":
        push(args[1], args[2], insecure)
    elif len(args) == 3 and args[0] == "pull":
        pull(args[1], args[2], insecure)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
