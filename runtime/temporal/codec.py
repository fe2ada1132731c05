"""Large payloads stay out of Temporal's history: a claim-check codec.

Every payload that crosses Temporal (workflow input and result, activity arguments and
results, query results) passes through `BlobCodec`. One larger than the threshold is written
to the blob directory under its sha256 and replaced by a small payload that carries only the
digest; the receiving side reads the file back. Temporal refuses payloads over 2 MB and keeps
every payload of a run in its history, so without this a long tool output would fail the run.

The blob directory must be the same directory for the client and every worker (a shared
filesystem path on several machines). Files are content-addressed, written atomically, never
modified, and safe to delete once no workflow that mentions them is open or needed again.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

from temporalio.api.common.v1 import Payload
from temporalio.converter import (CompositePayloadConverter, DataConverter, DefaultPayloadConverter,
                                  JSONPlainPayloadConverter, PayloadCodec)

ENCODING = b"binary/agentflow-blob"
DEFAULT_THRESHOLD = 256 * 1024  # bytes; Temporal warns at 512 KB and refuses 2 MB


def default_threshold() -> int:
    raw = os.environ.get("AGENTFLOW_BLOB_THRESHOLD")
    return int(raw) if raw else DEFAULT_THRESHOLD


class BlobMissing(Exception):
    pass


class BlobCodec(PayloadCodec):
    def __init__(self, blob_dir: Path, threshold: int | None = None) -> None:
        self.blob_dir = Path(blob_dir).resolve()
        self.threshold = default_threshold() if threshold is None else threshold

    def path(self, digest: str) -> Path:
        return self.blob_dir / digest[:2] / digest

    def _write(self, data: bytes, digest: str) -> None:
        path = self.path(digest)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _read(self, digest: str) -> bytes:
        path = self.path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BlobMissing(f"payload blob {digest} is not in {self.blob_dir}: the client and every worker "
                              f"need the same --blob-dir (a shared path on several machines)") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise BlobMissing(f"payload blob {path} is corrupt (its content does not match its name)")
        return data

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = []
        for payload in payloads:
            if payload.ByteSize() <= self.threshold:
                out.append(payload)
                continue
            data = payload.SerializeToString()
            digest = hashlib.sha256(data).hexdigest()
            await asyncio.to_thread(self._write, data, digest)
            out.append(Payload(metadata={"encoding": ENCODING, "digest": digest.encode(),
                                         "size": str(len(data)).encode()}))
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = []
        for payload in payloads:
            if payload.metadata.get("encoding") != ENCODING:
                out.append(payload)
                continue
            data = await asyncio.to_thread(self._read, payload.metadata["digest"].decode())
            out.append(Payload.FromString(data))
        return out


class _OrderedJSON(JSONPlainPayloadConverter):
    """The SDK's JSON, without sorting keys: record fields keep their declared order, so a
    result prints as a local run prints it."""

    def to_payload(self, value):
        return Payload(metadata={"encoding": self.encoding.encode()},
                       data=json.dumps(value, cls=self._encoder, separators=(",", ":")).encode())


class PayloadConverter(CompositePayloadConverter):
    def __init__(self) -> None:
        super().__init__(*(_OrderedJSON() if type(c) is JSONPlainPayloadConverter else c
                           for c in DefaultPayloadConverter.default_encoding_payload_converters))


def data_converter(blob_dir: Path, threshold: int | None = None) -> DataConverter:
    return DataConverter(payload_converter_class=PayloadConverter, payload_codec=BlobCodec(blob_dir, threshold))
