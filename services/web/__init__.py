"""The web front: an HTTP/JSON API over the gateway and the page people use (``kyb serve web``).

It is a thin client of the gateway (:class:`kyb.client.GatewayClient`), never a second identify:
``servicer.py`` holds the handlers, ``server.py`` ``create_server(config) -> (server, port)``,
``schema.py`` the answer shapes its OpenAPI description publishes, ``static/`` the page (plain
HTML/CSS/JS, no build step).
"""
