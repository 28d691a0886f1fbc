"""Subscribers to the event stream (:mod:`trigctl.events`): the log lines today; views and metrics later."""
