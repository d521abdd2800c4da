"""POST bodies: read the raw bytes on the event loop, parse them in a worker thread.

Reading is cheap (appending chunks) and bounded in size and time; parsing multipart is
CPU work per byte, so it runs off the event loop where it cannot delay other requests,
health checks or the 503 answers of an overloaded server. Parsing uses python-multipart,
the parser Starlette itself uses, with the same limits Starlette offers (files, fields,
part size), plus one check Starlette lacks: a multipart body must end with its closing
boundary, or it is malformed (error 16) rather than silently "empty".
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from .errors import BodyTimeoutError, MalformedBodyError, UploadTooLargeError

MAX_FILES = 4
MAX_FIELDS = 64
# Text fields (models, url, api_user, ...) are short; a URL is at most 4096 characters.
MAX_FIELD_BYTES = 64 * 1024
MAX_PART_HEADERS = 16
MAX_PART_HEADER_BYTES = 8 * 1024


@dataclass
class FilePart:
    field_name: str
    filename: str
    data: bytes


@dataclass
class ParsedForm:
    fields: list[tuple[str, str]] = field(default_factory=list)
    files: list[FilePart] = field(default_factory=list)


async def read_body(receive_stream, limit: int, timeout: float, too_large: Exception) -> bytes:
    """All of a request body, refused past ``limit`` bytes or ``timeout`` seconds."""
    body = bytearray()

    async def read() -> None:
        async for chunk in receive_stream:
            if len(body) + len(chunk) > limit:
                raise too_large
            body.extend(chunk)

    try:
        await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise BodyTimeoutError(
            f"the request body did not arrive within {timeout:g} s"
        ) from None
    except BaseException:
        body.clear()  # the traceback would keep it alive otherwise
        raise
    return bytes(body)


def parse_body(content_type: str, body: bytes, max_file_bytes: int) -> ParsedForm:
    """Parse a multipart/form-data or urlencoded body (blocking: run it in a thread)."""
    mime, options = parse_options_header(content_type)
    if mime == b"multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise MalformedBodyError("malformed form body: the multipart boundary is missing")
        return _parse_multipart(boundary, body, max_file_bytes)
    if mime == b"application/x-www-form-urlencoded" or (not mime and not body):
        try:
            pairs = parse_qsl(body.decode("latin-1"), keep_blank_values=True,
                              max_num_fields=MAX_FIELDS, encoding="utf-8", errors="replace")
        except ValueError as exc:
            raise MalformedBodyError(f"malformed form body: {exc}") from exc
        return ParsedForm(fields=pairs)
    shown = mime.decode("latin-1") or "(none)"
    raise MalformedBodyError(
        f"the body must be multipart/form-data or application/x-www-form-urlencoded, "
        f"not {shown}"
    )


def _parse_multipart(boundary: bytes, body: bytes, max_file_bytes: int) -> ParsedForm:
    form = ParsedForm()
    part: dict = {}
    header_name = bytearray()
    header_value = bytearray()

    def on_part_begin() -> None:
        part.clear()
        part.update(headers={}, data=bytearray())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        part["headers"][bytes(header_name).lower()] = bytes(header_value)
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        disposition, options = parse_options_header(
            part["headers"].get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in options:
            raise MalformedBodyError(
                "malformed form body: a part lacks 'Content-Disposition: form-data; name=...'")
        part["name"] = options[b"name"].decode("utf-8", "replace")
        filename = options.get(b"filename")
        part["filename"] = None if filename is None else filename.decode("utf-8", "replace")
        if part["filename"] is None:
            if len(form.fields) >= MAX_FIELDS:
                raise MalformedBodyError(f"malformed form body: more than {MAX_FIELDS} fields")
        elif len(form.files) >= MAX_FILES:
            raise MalformedBodyError(f"malformed form body: more than {MAX_FILES} files")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        buffer = part["data"]
        buffer.extend(data[start:end])
        if part["filename"] is None and len(buffer) > MAX_FIELD_BYTES:
            raise MalformedBodyError(
                f"malformed form body: field {part['name']!r} is longer than "
                f"{MAX_FIELD_BYTES} bytes")
        if len(buffer) > max_file_bytes:
            raise UploadTooLargeError("the upload is larger than the limit")

    def on_part_end() -> None:
        data = bytes(part["data"])
        if part["filename"] is None:
            form.fields.append((part["name"], data.decode("utf-8", "replace")))
        else:
            form.files.append(FilePart(part["name"], part["filename"], data))
        part.clear()

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
        },
        max_header_count=MAX_PART_HEADERS,
        max_header_size=MAX_PART_HEADER_BYTES,
    )
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise MalformedBodyError(f"malformed form body: {exc}") from exc
    if parser.state != MultipartState.END:
        # python-multipart's finalize() does not check this yet (its own TODO).
        raise MalformedBodyError(
            "malformed form body: the multipart body ends before its closing boundary")
    return form
