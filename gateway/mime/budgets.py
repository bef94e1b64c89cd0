"""Budgets of the MIME and attachment stages ([mime] in config/gateway.toml).

Everything a hostile message can inflate has a bound here. A bound that trips is a finding
(`MIME_LIMIT_*`, `ATT_LIMIT_*`, `ARCHIVE_*`), never a crash. A bound that leaves content (or a
file name) unread must never let the message through: its symbol is forced to quarantine in
rules/actions.toml (tests/test_mime_readings.py checks every MIME_LIMIT_* is).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pydantic import ConfigDict

from gateway.schema import TABLE_CONFIG, Count, Seconds, Text

MiB = 1024 * 1024


@dataclass(frozen=True)
class MimeSettings:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    max_header_bytes: Count = 256 * 1024  # the header section of the message or of one part
    max_header_fields: Count = 1000  # fields in one header section
    max_parts: Count = 500  # MIME entities in the message, all levels
    max_depth: Count = 20  # nesting of multipart and message/rfc822 entities
    max_params: Count = 64  # parameters in one Content-Type or Content-Disposition field
    max_param_chars: Count = 8192  # length of one Content-Type or Content-Disposition field
    max_decoded_bytes: Count = 128 * MiB  # decoded content of all parts of all readings
    max_archive_depth: Count = 4  # archives inside archives (a zip in a zip is depth 2)
    max_archive_members: Count = 1000  # members of all archives of one message
    max_member_bytes: Count = 64 * MiB  # one expanded member
    max_archive_bytes: Count = 256 * MiB  # all expanded members together
    max_archive_ratio: Count = 200  # expanded / compressed size of one member (zip bombs)
    time_budget: Seconds = 4.0  # seconds for the MIME walk of one message
    scan_time_budget: Seconds = 8.0  # seconds for the content scan (archives, documents) of one
    # QR codes in pictures (gateway.mime.qr): what one message may make the decoder do
    qr_max_images: Count = 20  # pictures decoded (image parts, data: images, PDF images)
    qr_max_image_pixels: Count = 16_000_000  # one picture; larger is never decoded (bombs)
    qr_max_pdfs: Count = 4  # PDF attachments whose images are decoded
    qr_max_pdf_pages: Count = 10  # pages of one PDF searched for images
    qr_max_pdf_bytes: Count = 16 * MiB  # a larger PDF is not opened
    qr_time_budget: Seconds = 4.0  # seconds for the QR scan of one message


DEFAULT_LIMITS = MimeSettings()


@dataclass(frozen=True)
class ClamavSettings:
    """clamd, reached over its INSTREAM protocol ([clamav] in config/gateway.toml)."""

    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    address: Text | None = None  # a Unix socket path, or "host:port" (TCP)
    timeout: Seconds = 8.0  # seconds for connect, stream, verdict (under [plugins] timeout)
    chunk_size: Count = 64 * 1024  # bytes per INSTREAM chunk
    # clamd's StreamMaxLength (Debian's default is 25M): a larger stream is not sent (clamd would
    # cut the connection) but reported CLAMAV_UNSCANNED
    max_stream: Count = 25 * 1024 * 1024
