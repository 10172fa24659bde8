"""A smoke test for `upgrader flags bisect` (README, "Feature flags in one minute").

It reads the flags the way a test of the "shop" service would: from the store in
$UPGRADER_FLAG_STORE, in the environment $UPGRADER_FLAG_ENV (bisect sets both; without them,
the default store .upgrader/flags.sqlite and production). It checks out a basket of 3 items
at 10.00 for a beta user in Germany; the one-page checkout (`new-checkout`, which needs
`payments-v2`) has a bug: it charges the shipping twice. Exit 0 when the total is right,
1 when it is wrong.

    upgrader flags import sample_fleets/flags.toml
    upgrader flags bisect --test "python examples/checkout_smoke.py" \\
        --flags new-checkout,payments-v2
"""

from __future__ import annotations

import os
import sys

from upgrader.flags.store import default_store_spec, open_store

USER = {"targetingKey": "u-42", "groups": ["beta"], "tier": "gold", "country": "DE",
        "app_version": "2.5.0", "email": "u-42@example.com", "account_age_days": 400}
PRICES, SHIPPING = [10.00, 10.00, 10.00], 4.90


def checkout(one_page: bool) -> float:
    total = sum(PRICES) + SHIPPING
    return total + SHIPPING if one_page else total      # the bug the test catches


def main() -> int:
    store_spec = os.environ.get("UPGRADER_FLAG_STORE") or default_store_spec()
    environment = os.environ.get("UPGRADER_FLAG_ENV") or "production"
    with open_store(store_spec) as store:
        flags = store.evaluator(environment)
        one_page = bool(flags.evaluate("new-checkout", USER).value)
    total = checkout(one_page)
    expected = round(sum(PRICES) + SHIPPING, 2)
    checkout_name = "one-page" if one_page else "classic"
    if round(total, 2) != expected:
        print(f"FAIL: {checkout_name} checkout charged {total:.2f}, expected {expected:.2f}")
        return 1
    print(f"ok: {checkout_name} checkout charged {total:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
