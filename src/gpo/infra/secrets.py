"""Secrets never reach a logged config or record (the W&B config and run
metadata, summary.json, the .hydra/*.yaml files Hydra writes, multirun.yaml).

A value is a secret by its key (api_key, token, hf_token, wandb_key, password,
passphrase, secret, credentials, private_key, bearer, ...) or by its look
(hf_..., sk-..., ghp_..., xox?-..., AKIA..., AIza..., "Bearer ..."), inside any
string too: an override `+model.policy.token=...`, a URL with a token in it.
Redacted values become "***"."""

import re
import sys
from contextlib import contextmanager

MASK = "***"

# A key whose last component is one of these names (or ends with _<name>): its value is a secret.
SECRET_KEY = re.compile(r"(^|[_\-.])(token|api[_-]?key|apikey|wandb[_-]?key|secret|password|passwd|passphrase|"
                        r"credentials?|private[_-]?key|access[_-]?key|auth|bearer)$", re.IGNORECASE)
NOT_SECRET_KEY = re.compile(r"(^|[_\-.])(pad|eos|bos|unk|sep|cls|mask)_token$", re.IGNORECASE)  # tokenizer settings
SECRET_VALUE = re.compile(
    r"(hf_(?=[A-Za-z]*[0-9])(?=[0-9]*[A-Za-z])[A-Za-z0-9]{8,}"  # Hugging Face (letters and digits: not hf_transfer)
    r"|sk-[A-Za-z0-9_\-]{16,}"         # OpenAI-style API keys
    r"|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"  # GitHub
    r"|xox[abprs]-[A-Za-z0-9\-]{10,}"  # Slack
    r"|AKIA[0-9A-Z]{16}"               # AWS access key id
    r"|AIza[0-9A-Za-z_\-]{35}"         # Google API key
    r"|(?<=Bearer )[A-Za-z0-9._~+/\-]{8,}=*)"  # an HTTP Authorization header's token
)
OVERRIDE = re.compile(r"^(?P<key>[+~]{0,2}[\w.\-/@]+)=(?P<value>.*)$", re.DOTALL)


def is_secret_key(key) -> bool:
    name = str(key).rsplit(".", 1)[-1].rsplit("/", 1)[-1]
    return bool(SECRET_KEY.search(name)) and not NOT_SECRET_KEY.search(name)


def redact_text(text: str) -> str:
    """A string with secrets masked: the value of a `key=value` override whose
    key names a secret, and anything that looks like a token."""
    match = OVERRIDE.match(text)
    if match and is_secret_key(match["key"].lstrip("+~")) and match["value"]:
        return f"{match['key']}={MASK}"
    return SECRET_VALUE.sub(MASK, text)


def redact(value, key=None):
    """`value` (plain containers: dicts, lists, strings, numbers) with secrets masked."""
    if key is not None and is_secret_key(key) and value not in (None, "", False):
        return MASK
    if isinstance(value, dict):
        return {k: redact(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    if isinstance(value, str):
        return redact_text(value)
    return value


@contextmanager
def redacted_argv():
    """sys.argv with secrets masked, for code that records the command line
    (W&B stores it in the run's metadata); the real one back after."""
    real = list(sys.argv)
    sys.argv[1:] = [redact_text(arg) for arg in real[1:]]
    try:
        yield
    finally:
        sys.argv[:] = real
