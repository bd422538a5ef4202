"""API keys, permission profiles, policy resolution and signing, budgets, the task registry.

Depends only on ``bus``; the server calls it, runners never import it (they verify jobs
with ``bus.verify_job``).
"""

from ._apply import ApplyResult as ApplyResult
from ._audit import NoticeBuffer as NoticeBuffer
from ._audit import publish_notices as publish_notices
from ._budgets import BudgetStatus as BudgetStatus
from ._budgets import BudgetWindow as BudgetWindow
from ._budgets import Reservation as Reservation
from ._budgets import check_can_pay as check_can_pay
from ._import import ImportReport as ImportReport
from ._import import import_database as import_database
from ._keys import KeyRecord as KeyRecord
from ._keys import parse_expiry as parse_expiry
from ._kv import SafeKeys as SafeKeys
from ._policy import offered_catalog as offered_catalog
from ._policy import offered_models as offered_models
from ._policy import resolve_policy as resolve_policy
from ._policy import sign_policy as sign_policy
from ._policy import tool_granted as tool_granted
from ._policy import verify as verify
from ._profiles import KNOWN_TOOLS as KNOWN_TOOLS
from ._profiles import PROFILE_FIELDS as PROFILE_FIELDS
from ._profiles import Profile as Profile
from ._profiles import check_tool_name as check_tool_name
from ._profiles import default_profiles as default_profiles
from ._profiles import parse_profiles_toml as parse_profiles_toml
from ._profiles import profile_from_mapping as profile_from_mapping
from ._profiles import profile_to_mapping as profile_to_mapping
from ._store import DB_NAME as DB_NAME
from ._store import Store as Store
from ._tasks import STATUSES as STATUSES
from ._tasks import TaskRecord as TaskRecord

__all__ = [
    "ApplyResult",
    "BudgetStatus",
    "BudgetWindow",
    "DB_NAME",
    "ImportReport",
    "KNOWN_TOOLS",
    "KeyRecord",
    "NoticeBuffer",
    "PROFILE_FIELDS",
    "Profile",
    "Reservation",
    "STATUSES",
    "SafeKeys",
    "Store",
    "TaskRecord",
    "check_tool_name",
    "default_profiles",
    "import_database",
    "parse_expiry",
    "parse_profiles_toml",
    "profile_from_mapping",
    "profile_to_mapping",
    "publish_notices",
    "resolve_policy",
    "offered_catalog",
    "offered_models",
    "sign_policy",
    "tool_granted",
    "verify",
]
