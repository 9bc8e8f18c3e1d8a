"""The HTTP API (`app.create_app`) and the web page it serves (`web/`), an adapter over the session driver."""
