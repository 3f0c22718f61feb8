"""The operator's side of the daemon: the control socket served inside the event loop, and
the rendering of what it answers (JSON on the wire, text for ``tunnelrouter show``)."""
