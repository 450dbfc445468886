"""Process titles: every process of the tree states its role and state in ps."""

import setproctitle

PREFIX = "vacd: "


def set_title(text):
    """Set this process's title to 'vacd: <text>'."""
    setproctitle.setproctitle(PREFIX + text)


def format_elapsed(seconds):
    """H:MM:SS, as operators read it in ps."""
    seconds = max(int(seconds), 0)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
