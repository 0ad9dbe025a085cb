"""One way to reach files: local paths, file://, s3:// and gs:// URIs through pyarrow.fs (credentials from the env)."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

import pyarrow.fs as pafs

_REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "hdfs://", "abfs://", "abfss://")


def is_remote(uri: str) -> bool:
    """True for object-store URIs, False for local paths and file:// URIs."""
    return uri.startswith(_REMOTE_SCHEMES)


def local_path(uri: str) -> str:
    """The absolute local path of a plain path or file:// URI."""
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return os.path.abspath(os.path.expanduser(uri))


# The AWS SDKs' endpoint variables (the S3-specific one first); pyarrow's S3 client does not read them itself.
S3_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or URI."""
    if is_remote(uri):
        return pafs.FileSystem.from_uri(with_s3_endpoint(uri))
    return pafs.LocalFileSystem(), local_path(uri)


def with_s3_endpoint(uri: str) -> str:
    """An s3:// URI with the endpoint from $AWS_ENDPOINT_URL_S3 or $AWS_ENDPOINT_URL (MinIO, Ceph, a test server)
    unless the URI names one itself (?endpoint_override=...); other URIs unchanged."""
    if not uri.startswith("s3://") or "endpoint_override=" in uri:
        return uri
    endpoint = next((os.environ[name] for name in S3_ENDPOINT_VARIABLES if os.environ.get(name)), "")
    if not endpoint:
        return uri
    separator = "&" if "?" in uri else "?"
    return f"{uri}{separator}endpoint_override={urllib.parse.quote(endpoint, safe='')}"


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI or path with '/'."""
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def exists(uri: str) -> bool:
    """Whether a file or directory exists at uri."""
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_text(uri: str) -> str:
    """The whole text file at uri (UTF-8)."""
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read().decode("utf-8")


def write_text_atomic(uri: str, text: str) -> None:
    """Write a text file so readers see the old file or the new one, never half of it."""
    fs, path = resolve(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with fs.open_output_stream(tmp) as f:
        f.write(text.encode("utf-8"))
    fs.move(tmp, path)


def upload_dir(local_dir: str | Path, uri: str) -> None:
    """Copy a local directory tree to uri (a local path or an object store)."""
    fs, path = resolve(uri)
    pafs.copy_files(
        str(local_dir),
        path,
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=fs,
    )


def download_dir(uri: str, local_dir: str | Path) -> Path:
    """Copy the directory at uri into local_dir; returns local_dir."""
    fs, path = resolve(uri)
    Path(local_dir).mkdir(parents=True, exist_ok=True)
    pafs.copy_files(
        path,
        str(local_dir),
        source_filesystem=fs,
        destination_filesystem=pafs.LocalFileSystem(),
    )
    return Path(local_dir)


def materialize_dir(uri: str, cache_dir: str | Path) -> Path:
    """A local directory with the contents of uri: the path itself when local, else a downloaded copy."""
    if not is_remote(uri):
        return Path(local_path(uri))
    target = Path(cache_dir) / uri.replace("://", "/").strip("/")
    return download_dir(uri, target)
