"""`python -m openchat_core.serving --model DIR [--engine vllm|transformers] [--host --port ...]`.

Flags are generated from `ServeSettings` (`--help` lists them). Keys: `--api-keys K1 K2` and
`--admin-key K`, or, to keep them out of `ps`, the env vars OPENCHAT_API_KEYS (comma-separated)
and OPENCHAT_ADMIN_KEY. The `__main__` guard matters: vLLM's engine processes re-import this module.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    import os

    from openchat_core.telemetry import telemetry_defaults

    os.environ.update(telemetry_defaults())  # process start, before vLLM is imported (it reads its switch then)
    from openchat_core.serving.server import STARTUP_FAILED_EXIT, ServerStartupError, serve
    from openchat_core.serving.settings import settings_from_args

    settings = settings_from_args(argv)
    try:
        serve(settings)
    except ServerStartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return STARTUP_FAILED_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
