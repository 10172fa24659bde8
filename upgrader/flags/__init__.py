"""Feature flags: a flag set (TOML file or store) compiled into a fast evaluator.

- :mod:`.model`: the plain data (FlagSet, Flag, EnvConfig, Rule, Tier, ...)
- :mod:`.loader`: the flags file <-> FlagSet, every key checked (ConfigError with a line)
- :mod:`.evaluate`: ``compile_flags(flagset, environment).evaluate(key, context)``
- :mod:`.edit`: pure changes (enable, roll-out percentage, default variant)
- :mod:`.store`: SQLite / PostgreSQL stores with an audit trail
- :mod:`.cli`: ``upgrader flags ...``

docs/FLAGS.md describes the file format, the evaluation order and the bucketing hash.
Submodules are imported on use; this package imports nothing at import time.
"""
