"""The shared contract: settings, subjects, wire messages, errors, the NATS connection."""

from ._catalog import BUILTIN_AGENTS as BUILTIN_AGENTS
from ._catalog import CATALOG_KINDS as CATALOG_KINDS
from ._catalog import Catalog as Catalog
from ._catalog import CatalogLimits as CatalogLimits
from ._catalog import bundle_hash as bundle_hash
from ._catalog import catalog_home_files as catalog_home_files
from ._catalog import make_bundle as make_bundle
from ._catalog import validate_bundle as validate_bundle
from ._codec import canonical as canonical
from ._codec import decode as decode
from ._codec import decode_control as decode_control
from ._codec import decode_event as decode_event
from ._codec import decode_heartbeat as decode_heartbeat
from ._codec import decode_job as decode_job
from ._codec import decode_notice as decode_notice
from ._codec import decode_reply as decode_reply
from ._codec import decode_request as decode_request
from ._codec import encode as encode
from ._codec import json_schemas as json_schemas
from ._codec import sign_job as sign_job
from ._codec import verify_job as verify_job
from ._connection import Bus as Bus
from ._connection import connect_options as connect_options
from ._connection import ensure_control_plane as ensure_control_plane
from ._connection import ensure_streams as ensure_streams
from ._connection import publish_acked as publish_acked
from ._embedded import EmbeddedNats as EmbeddedNats
from ._embedded import find_nats_server as find_nats_server
from ._embedded import free_port as free_port
from ._errors import *  # noqa: F403  (the error tree is public as a whole)
from ._errors import __all__ as _errors_all
from ._messages import *  # noqa: F403
from ._messages import __all__ as _messages_all
from ._paths import check_relative_path as check_relative_path
from ._paths import input_file_bytes as input_file_bytes
from ._private import private_database as private_database
from ._private import private_dir as private_dir
from ._redact import REDACTED as REDACTED
from ._redact import redact as redact
from ._retry import Backoff as Backoff
from ._retry import retry_async as retry_async
from ._redact import redact_obj as redact_obj
from ._secrets import job_secret_path as job_secret_path
from ._secrets import load_or_create_job_secret as load_or_create_job_secret
from ._settings import ModelPrice as ModelPrice
from ._settings import Settings as Settings
from ._settings import settings_reference as settings_reference
from ._subjects import JOB_KINDS as JOB_KINDS
from ._subjects import JobKind as JobKind
from ._subjects import Subjects as Subjects
from ._subjects import check_token as check_token
from ._subjects import new_task_id as new_task_id
from ._toolnames import CLAUDE_CODE_TOOLS as CLAUDE_CODE_TOOLS
from ._toolnames import CLAUDE_CODE_VERSION as CLAUDE_CODE_VERSION
from ._toolnames import TOOL_ALIASES as TOOL_ALIASES
from ._toolnames import Grant as Grant
from ._toolnames import canonical_tool as canonical_tool
from ._toolnames import command_matches as command_matches
from ._toolnames import expand_grants as expand_grants
from ._toolnames import grant_covers as grant_covers
from ._toolnames import tool_exists as tool_exists
from ._toolnames import tool_names as tool_names
from ._toolnames import tool_offered as tool_offered
from ._toolnames import parse_grant as parse_grant

__all__ = [
    "Backoff", "retry_async",
    "BUILTIN_AGENTS", "CATALOG_KINDS", "Catalog", "CatalogLimits", "bundle_hash", "catalog_home_files",
    "make_bundle", "validate_bundle",
    "Bus", "connect_options", "EmbeddedNats", "private_database", "private_dir", "JOB_KINDS", "JobKind", "ModelPrice", "Settings", "Subjects",
    "canonical", "check_token", "decode", "decode_control", "decode_event", "decode_heartbeat",
    "decode_job", "decode_notice", "decode_reply", "decode_request", "encode", "ensure_control_plane", "ensure_streams",
    "find_nats_server", "free_port", "json_schemas", "new_task_id", "publish_acked",
    "settings_reference", "check_relative_path", "input_file_bytes", "job_secret_path", "load_or_create_job_secret", "REDACTED", "redact", "redact_obj", "sign_job", "verify_job",
    "CLAUDE_CODE_TOOLS", "CLAUDE_CODE_VERSION", "TOOL_ALIASES", "Grant", "canonical_tool", "command_matches",
    "expand_grants", "grant_covers", "parse_grant", "tool_exists", "tool_names", "tool_offered",
    *_errors_all, *_messages_all,
]
