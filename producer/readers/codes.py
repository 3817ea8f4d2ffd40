"""Why an input line is not a record: the reason codes of bad and skipped lines.

A code is stored with each such line (``bad_lines.code``) and is the ``code`` of its entry
in OpenAI-style errors (``vfleet status --json``, ``vfleet export --format openai``).
"""

from __future__ import annotations

from workers.store.bad_lines import BLANK_LINE

# The line itself: read by every reader.
NOT_UTF8 = "invalid_encoding"
TOO_LARGE = "line_too_large"
INVALID_JSON = "invalid_json_line"
NOT_AN_OBJECT = "not_an_object"
TOO_DEEP = "too_deeply_nested"
INVALID_TEXT = "invalid_unicode"
INVALID_CSV = "invalid_csv_row"
FIELD_COUNT = "wrong_field_count"
# Records that are objects (Parquet rows, DataFrames, dicts from Python).
INVALID_VALUE = "invalid_value"
# Its key (the key field, or custom_id).
MISSING_KEY = "missing_key"
INVALID_KEY = "invalid_key"
DUPLICATE_KEY = "duplicate_key"
DUPLICATE_CUSTOM_ID = "duplicate_custom_id"
# OpenAI batch lines.
NOT_A_BATCH_LINE = "invalid_batch_line"
UNSUPPORTED_METHOD = "unsupported_method"
UNSUPPORTED_URL = "unsupported_url"
INVALID_REQUEST = "invalid_request"
MISMATCHED_MODEL = "mismatched_model"
MODEL_NOT_FOUND = "model_not_found"
# Checked by --strict only (a worker fails such a record with error kind "template").
TEMPLATE_ERROR = "template_error"

DESCRIPTIONS = {
    BLANK_LINE: "blank line, skipped",
    NOT_UTF8: "bytes that are not UTF-8 text",
    TOO_LARGE: "line longer than --max-record-bytes",
    INVALID_JSON: "not valid JSON",
    NOT_AN_OBJECT: "JSON, but not an object",
    TOO_DEEP: "JSON nested too deeply",
    INVALID_TEXT: "text that is not Unicode (a lone surrogate escape)",
    INVALID_CSV: "a CSV row the csv module cannot read",
    FIELD_COUNT: "a CSV row with more or fewer fields than the header",
    INVALID_VALUE: "a value with no JSON form (an infinite number, an object of another kind)",
    MISSING_KEY: "no key field",
    INVALID_KEY: "a key the ledger cannot hold (empty, too long, not a string or number)",
    DUPLICATE_KEY: "a key an earlier line already has",
    DUPLICATE_CUSTOM_ID: "a custom_id an earlier line already has",
    NOT_A_BATCH_LINE: "not an OpenAI batch line (custom_id, method, url, body)",
    UNSUPPORTED_METHOD: "a method other than POST",
    UNSUPPORTED_URL: "a url the fleet does not serve",
    INVALID_REQUEST: "a body the url cannot take",
    MISMATCHED_MODEL: "a body.model other than the batch's",
    MODEL_NOT_FOUND: "a body.model the fleet does not serve",
    TEMPLATE_ERROR: "a record the spec's templates cannot render",
}
"""What each code means, for ``vfleet report``."""
