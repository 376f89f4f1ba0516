"""The HTTP layer both services share: who is calling (auth.py), each request's ids
(context.py), the error vocabulary and where errors become responses (errors.py, body.py),
request metrics (metrics.py), and what every service's app is built with (layer.py)."""
