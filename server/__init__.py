"""The human rating page (issue 13): routes on ComfyUI's own server, SQLite storage, statistics.

``store`` and ``stats`` and ``studies`` are plain modules (no ComfyUI); ``routes`` adds the pages
and the JSON API to ``PromptServer.instance.routes``.
"""
