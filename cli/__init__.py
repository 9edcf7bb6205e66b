"""The command line, the outermost layer: it imports flows, tasks, blocks and the engine; nothing imports it.

``cli.main`` holds the commands, ``cli.options`` the options they share, ``cli.console`` what they print.
"""
