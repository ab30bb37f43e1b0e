"""The orchestration commands of `openchat` (`run`, `data`, `demo`, `up`).

They start Prefect flows, print to the console and supervise services, so they live apart from both
`openchat_core` (which must not import Prefect) and `flows/` (which holds only `@flow`s). They are
plugged into the `openchat` command through the `openchat.commands` entry point (pyproject.toml).
"""
