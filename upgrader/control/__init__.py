"""Steering a rollout from elsewhere: the handle front ends use, and a local control API so a
rollout can outlive the terminal that started it (``upgrader run --detach``,
``upgrader attach``)."""
