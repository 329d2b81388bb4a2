"""`chat`: a conversation with one session process, as a job the shell can stop and continue.

The session is spawned with the first turn and never exits at the end of a turn: it sleeps with
its KV resident until the next turn is written, so each turn prefills only the new text. A reader
thread (its own connection) copies every reply to the output and signals each turn's end; the
turns come from the user at a `chat[PID]>` prompt (interactive), or from a `<` file / piped stdin
one line per turn (scripted: each turn is echoed after the same `chat[PID]> ` label before its reply;
then the whole conversation is an ordinary job, `&` works).

Keys while chatting: Ctrl-C during a reply interrupts it (SIGINT: the session goes back to waiting
for input); Ctrl-C at the prompt clears the line; Ctrl-Z stops the job (SIGSTOP) and returns to
the shell, where `fg` continues the conversation; `/exit`, `/quit` or Ctrl-D end it.
"""

from __future__ import annotations

import threading

from llmos.kernel import abi
from llmos.shell.jobs import Job, describe_status
from llmos.shell.runner import ProcessSpec, drain, error_text, exit_status, warn
from llmos.shell.streams import TERMINAL, CommandError, Stream

SUSPEND = object()          # the prompt's answer to Ctrl-Z
EXIT_WORDS = ("/exit", "/quit")


class Chat:
    def __init__(self, sh, spec: ProcessSpec, out: Stream, job: Job):
        self.sh, self.spec, self.out, self.job = sh, spec, out, job
        self.pid: int | None = job.pids[0] if job.pids else None
        self.turn_done = threading.Event()
        self.turn_done.set()
        self.closing = False
        self._prompt = None
        if self.pid is not None:            # adopting a live session (fork): read it from now on
            self._start_reader()

    # --- turns ------------------------------------------------------------------------------
    def send(self, client, text: str) -> None:
        """Start the next turn (the first one spawns the session). Raises CommandError."""
        self.turn_done.clear()
        try:
            if self.pid is None:
                self.pid = self.spec.spawn(client, text)
                self.job.pids.append(self.pid)
                self.job.live.add(self.pid)
                self._start_reader()
            else:
                client.write(self.pid, {"role": "user", "content": text})
        except OSError as e:
            self.turn_done.set()
            raise CommandError(error_text(e, self.pid)) from None

    def _start_reader(self) -> None:
        threading.Thread(target=self._read, name=f"chat-{self.pid}", daemon=True).start()

    def _read(self) -> None:
        status, client = 1, None
        try:
            client = self.sh.connect()
            st = drain(client, self.pid, self.out, on_turn_end=self._turn_end)
            status = 0 if self.closing else exit_status(st)
            if st.get("reason") == "error":
                warn(f"chat: session {self.pid} failed: {st.get('message')}")
        except OSError as e:
            if not self.closing:
                warn(f"chat: session {self.pid}: {error_text(e)}")
        finally:
            if client is not None:
                client.close()
            self.job.live.clear()
            if self.out is not TERMINAL:
                self.out.close()
            self.sh.jobs.finish(self.job, status)
            self.turn_done.set()

    def _turn_end(self) -> None:
        if self.out is TERMINAL:
            TERMINAL.end_line()
        else:
            self.out.write("\n")
        self.turn_done.set()

    def close(self, client) -> None:
        """End the session (SIGTERM) and wait for the reader to reap it."""
        self.closing = True
        if self.pid is not None and self.job.live:
            try:
                client.kill(self.pid, abi.SIGTERM)
            except OSError:
                pass
            self.job.done.wait(5)
        else:
            self.sh.jobs.finish(self.job, 0)

    # --- interactive: the loop `fg` re-enters ----------------------------------------------
    def foreground(self) -> int:
        """Take turns from the user until /exit (0), Ctrl-Z (148) or the session ends."""
        if not self.turn_done.is_set() and self.sh.wait_fg(self.job, self.turn_done) == "stopped":
            return 148
        while True:
            if self.job.done.is_set():
                warn(f"chat: session {self.pid} ended ({describe_status(self.job.status)})")
                return self.job.status
            line = self._ask()
            if line is SUSPEND:
                self.sh.stop_job(self.job)
                return 148
            if line is None or line.strip() in EXIT_WORDS:
                self.close(self.sh.client)
                self.job.notified = True
                return 0
            if not line.strip():
                continue
            try:
                with self.sh.signals_deferred():
                    self.send(self.sh.client, line)
            except CommandError as e:
                warn(f"chat: {e.message}")
                continue
            if self.sh.wait_fg(self.job, self.turn_done) == "stopped":
                return 148

    def _label(self) -> str:
        return f"chat[{self.pid}]> " if self.pid else "chat> "

    def _ask(self):
        """One line from the user; None at end of input (Ctrl-D); SUSPEND for Ctrl-Z."""
        label = self._label()
        if not self.sh.tty:
            try:
                return input(label)
            except EOFError:
                return None
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory
        from prompt_toolkit.key_binding import KeyBindings
        from prompt_toolkit.patch_stdout import patch_stdout
        if self._prompt is None:
            keys = KeyBindings()
            keys.add("c-z")(lambda event: event.app.exit(result=SUSPEND))
            self._prompt = PromptSession(history=FileHistory(str(self.sh.home / "chat_history")),
                                         key_bindings=keys)
        while True:
            try:
                with patch_stdout(raw=True):
                    return self._prompt.prompt(label)
            except KeyboardInterrupt:
                continue
            except EOFError:
                return None

    # --- scripted: turns from a file or a pipe -----------------------------------------------
    def feed(self, turns: list[str]) -> None:
        """Send each turn after the previous reply ended, then end the session (a thread)."""
        threading.Thread(target=self._feed, args=(turns,), name=f"chat-feed-{self.job.id}",
                         daemon=True).start()

    def _feed(self, turns: list[str]) -> None:
        client = None
        try:
            client = self.sh.connect()
            for text in turns:
                if self.job.interrupted or self.job.done.is_set():
                    break
                self.out.write(f"{self._label()}{text}\n")     # the turn, as the prompt shows it
                self.send(client, text)
                self.turn_done.wait()
            self.close(client)
        except (CommandError, OSError) as e:
            warn(f"chat: {getattr(e, 'message', None) or error_text(e)}")
            self.closing = True
            if self.pid is None:
                self.sh.jobs.finish(self.job, 1)
            elif client is not None:
                self.close(client)
        finally:
            if client is not None:
                client.close()
