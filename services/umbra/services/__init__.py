"""Umbra's services. Each module builds one service's servicers on the shared runtime (`umbra.runtime`)."""
