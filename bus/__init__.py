"""The shared contract: settings, subjects, wire messages, errors, the NATS connection."""

from ._catalog import BUILTIN_AGENTS as BUILTIN_AGENTS
from ._catalog import CATALOG_KINDS as CATALOG_KINDS
from ._catalog import SKILL_FILE as SKILL_FILE
from ._catalog import Catalog as Catalog
from ._catalog import CatalogLimits as CatalogLimits
from ._catalog import bundle_hash as bundle_hash
from ._catalog import catalog_home_files as catalog_home_files
from ._catalog import make_bundle as make_bundle
from ._catalog import parse_frontmatter as parse_frontmatter
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
from ._connection import publish_acked as publish_acked
from ._duration import is_duration as is_duration
from ._duration import parse_duration as parse_duration
from ._embedded import ClusterSpec as ClusterSpec
from ._embedded import EmbeddedCluster as EmbeddedCluster
from ._embedded import EmbeddedNats as EmbeddedNats
from ._embedded import find_nats_server as find_nats_server
from ._embedded import free_port as free_port
from ._embedded import write_config as write_config
from ._errors import *  # noqa: F403  (the error tree is public as a whole)
from ._errors import __all__ as _errors_all
from ._excgroup import first_error as first_error
from ._messages import *  # noqa: F403  (the wire messages are public as a whole)
from ._messages import __all__ as _messages_all
from ._natsauth import ROLES as ROLES
from ._natsauth import authorization_block as authorization_block
from ._natsauth import credentials_path as credentials_path
from ._natsauth import read_credentials as read_credentials
from ._natsauth import server_authorization as server_authorization
from ._paths import check_relative_path as check_relative_path
from ._paths import input_file_bytes as input_file_bytes
from ._private import private_database as private_database
from ._private import private_dir as private_dir
from ._private import write_private as write_private
from ._provision import ensure_control_plane as ensure_control_plane
from ._provision import ensure_streams as ensure_streams
from ._redact import REDACTED as REDACTED
from ._redact import redact as redact
from ._redact import redact_obj as redact_obj
from ._redact import safe_url as safe_url
from ._retry import Backoff as Backoff
from ._retry import retry_async as retry_async
from ._secrets import job_secret_path as job_secret_path
from ._secrets import load_or_create_job_secret as load_or_create_job_secret
from ._settings import ModelPrice as ModelPrice
from ._settings import Settings as Settings
from ._settings import settings_reference as settings_reference
from ._streams import LEADERLESS as LEADERLESS
from ._streams import UNANSWERED as UNANSWERED
from ._streams import StreamHealth as StreamHealth
from ._streams import patient as patient
from ._streams import stream_health as stream_health
from ._streams import taskbus_streams as taskbus_streams
from ._subjects import JOB_KINDS as JOB_KINDS
from ._subjects import JobKind as JobKind
from ._subjects import Subjects as Subjects
from ._subjects import check_token as check_token
from ._subjects import new_task_id as new_task_id
from ._tls import TlsState as TlsState
from ._tls import connection_tls as connection_tls
from ._toolnames import CLAUDE_CODE_TOOLS as CLAUDE_CODE_TOOLS
from ._toolnames import CLAUDE_CODE_VERSION as CLAUDE_CODE_VERSION
from ._toolnames import TOOL_ALIASES as TOOL_ALIASES
from ._toolnames import Grant as Grant
from ._toolnames import canonical_tool as canonical_tool
from ._toolnames import command_matches as command_matches
from ._toolnames import expand_grants as expand_grants
from ._toolnames import grant_covers as grant_covers
from ._toolnames import parse_grant as parse_grant
from ._toolnames import tool_exists as tool_exists
from ._toolnames import tool_names as tool_names
from ._toolnames import tool_offered as tool_offered
from ._version import taskbus_version as taskbus_version

__all__ = [  # noqa: PLE0604 (the error tree and the wire messages are public as a whole: their __all__ spliced in)
    "Backoff",
    "retry_async",
    "first_error",
    "is_duration",
    "parse_duration",
    "taskbus_version",
    "BUILTIN_AGENTS",
    "CATALOG_KINDS",
    "Catalog",
    "CatalogLimits",
    "bundle_hash",
    "catalog_home_files",
    "make_bundle",
    "validate_bundle",
    "Bus",
    "ClusterSpec",
    "connect_options",
    "connection_tls",
    "TlsState",
    "EmbeddedCluster",
    "EmbeddedNats",
    "private_database",
    "private_dir",
    "JOB_KINDS",
    "JobKind",
    "ModelPrice",
    "Settings",
    "Subjects",
    "canonical",
    "check_token",
    "decode",
    "decode_control",
    "decode_event",
    "decode_heartbeat",
    "decode_job",
    "decode_notice",
    "decode_reply",
    "decode_request",
    "encode",
    "ensure_control_plane",
    "ensure_streams",
    "find_nats_server",
    "free_port",
    "json_schemas",
    "new_task_id",
    "publish_acked",
    "settings_reference",
    "check_relative_path",
    "input_file_bytes",
    "job_secret_path",
    "load_or_create_job_secret",
    "REDACTED",
    "redact",
    "redact_obj",
    "sign_job",
    "verify_job",
    "CLAUDE_CODE_TOOLS",
    "CLAUDE_CODE_VERSION",
    "TOOL_ALIASES",
    "Grant",
    "canonical_tool",
    "command_matches",
    "expand_grants",
    "grant_covers",
    "parse_grant",
    "tool_exists",
    "tool_names",
    "tool_offered",
    "SKILL_FILE",
    "parse_frontmatter",
    "write_config",
    "patient",
    "LEADERLESS",
    "UNANSWERED",
    "write_private",
    "ROLES",
    "authorization_block",
    "credentials_path",
    "read_credentials",
    "server_authorization",
    *_errors_all,
    *_messages_all,
]
