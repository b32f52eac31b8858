"""What tests feed Hermes and read back: input files, output records, signing files, raw chunks."""

from __future__ import annotations

import datetime
import hashlib
import io
import json
from pathlib import Path
from typing import Any

from hermes_producer.batch import BatchOptions, guard_duplicates, text_chunk_requests
from hermes_producer.reader import read_chunks
from hermes_producer.seen_ids import SeenIds
from hermes_worker.chunk_options import ChunkOptions
from hermes_worker.engine import resolve_profile
from hermes_worker.processing import process_chunk
from hermes_worker.wire import ChunkRequest, ChunkResult, request_span

from .environment import EXAMPLES


def strict_records(data: bytes) -> list[dict[str, Any]]:
    """The records of JSONL output, failing unless it is strict UTF-8 with one JSON record a line."""
    text = data.decode("utf-8")  # strict: a lone surrogate or a stray byte fails here
    assert text == "" or text.endswith("\n"), "output must end with a newline"
    records = [json.loads(line) for line in text.split("\n")[:-1]] if text else []
    assert all(isinstance(r, dict) for r in records)
    return records


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every JSONL record of an output file, in order."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def make_input(path: Path, count: int) -> Path:
    """``count`` JSONL items with ids ``p0``, ``p1``, ... cycling through examples/prompts.jsonl."""
    prompts = [row["prompt"] for row in read_records(EXAMPLES / "prompts.jsonl")]
    with path.open("w", encoding="utf-8") as handle:
        for n in range(count):
            handle.write(json.dumps({"id": f"p{n}", "prompt": prompts[n % len(prompts)]}, ensure_ascii=False) + "\n")
    return path


def make_signing_files(directory: Path, name: str) -> tuple[Path, Path]:
    """An RSA key and a self-signed certificate, made here, as PEM files (needs ``cryptography``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def batch_records(
    data: bytes, chunk_size: int = 2, fmt: str = "jsonl", max_bytes: int = 1000, profile: str = "nfc",
    memo: dict[str, ChunkResult] | None = None,
) -> list[dict[str, Any]]:
    """Every record ``hermes batch`` would write for ``data``, through raw chunks and the guard, in-process.

    ``memo`` keeps each chunk's result by its request (the engine is a pure function of it), so
    inputs that share chunks (a file and its first lines) are normalized once.
    """  # fmt: skip
    options = BatchOptions(resolve_profile(profile), fmt, ChunkOptions(max_prompt_bytes=max_bytes), chunk_size)  # type: ignore[arg-type]
    seen, records = SeenIds(), []
    for payload in text_chunk_requests(read_chunks(io.BytesIO(data), fmt, max_bytes, chunk_size), options):  # type: ignore[arg-type]
        key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8", "surrogatepass")).hexdigest()
        processed = memo.get(key) if memo is not None else None
        if processed is None:
            processed = process_chunk(ChunkRequest.from_payload(payload), mode="local", worker="w")
            if memo is not None:
                memo[key] = processed
        result = guard_duplicates(processed, seen)
        lines = result.record_lines()
        assert len(lines) == request_span(payload)[1] == result.count
        records += [json.loads(line) for line in lines]
    return records


def journal_chunks(output: Path) -> int:
    """How many chunks the running batch has written (lines of its journal after the header)."""
    try:
        return max(0, (output.with_name(output.name + ".partial.journal")).read_text().count("\n") - 1)
    except FileNotFoundError:
        return 0
