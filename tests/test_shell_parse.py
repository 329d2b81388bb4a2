"""The shell's pure parts: the parser (quoting, pipes, '&', redirections, ';', nice, job specs,
errors), the job table, and what completion reads from a half-typed line."""

import shlex

import pytest
from hypothesis import given, settings, strategies as st

from llmos.shell.parse import (Command, JobSpec, ParseError, Pipeline, Redirect, parse,
                               parse_jobspec, parse_target, tokenize, unparse)


def cmd(*argv, redirects=(), nice=None):
    return Command(tuple(argv), tuple(redirects), nice)


# --- words and quoting -------------------------------------------------------------------------

@pytest.mark.parametrize("line, argv", [
    ('run "hi there"', ("run", "hi there")),
    ("run 'it''s'", ("run", "its")),
    ("""run 'say "x"'""", ("run", 'say "x"')),
    (r'run "a \"b\" \\ \n"', ("run", r'a "b" \ \n')),
    (r"run a\ b \;", ("run", "a b", ";")),
    ('run "|" ";" "&" ">" "<"', ("run", "|", ";", "&", ">", "<")),
    ("run ''", ("run", "")),
    ("run pre'mid'\"post\"", ("run", "premidpost")),
    ("run a#b", ("run", "a#b")),
    ("run x # a comment | not a pipe", ("run", "x")),
    ("run 'two\nlines'", ("run", "two\nlines")),
    ("run a\\\nb", ("run", "ab")),
    ("  ps   -a  ", ("ps", "-a")),
])
def test_words(line, argv):
    assert parse(line) == [Pipeline((cmd(*argv),))]


def test_blank_and_comment_lines_are_empty():
    for line in ("", "   ", "\n\n", "# only a comment", "ps ;", "ps\n"):
        assert parse(line) == ([] if "ps" not in line else [Pipeline((cmd("ps"),))])


def test_tokens_remember_quoting_and_position():
    toks = tokenize('run "|" |')
    assert [(t.kind, t.text, t.pos, t.quoted) for t in toks] == [
        ("word", "run", 0, False), ("word", "|", 4, True), ("op", "|", 8, False)]


# --- separators, pipes and background jobs ------------------------------------------------------

def test_sequence_and_background():
    assert parse('run "hi" ; ps') == [Pipeline((cmd("run", "hi"),)), Pipeline((cmd("ps"),))]
    assert parse("run a & run b & jobs") == [
        Pipeline((cmd("run", "a"),), True), Pipeline((cmd("run", "b"),), True), Pipeline((cmd("jobs"),))]
    assert parse("run a&") == [Pipeline((cmd("run", "a"),), True)]
    assert parse("ps\nfree\n") == [Pipeline((cmd("ps"),)), Pipeline((cmd("free"),))]


def test_pipes():
    p = parse('run "list three fruits" | run "translate into French:" | run x')
    assert p == [Pipeline((cmd("run", "list three fruits"), cmd("run", "translate into French:"),
                           cmd("run", "x")))]
    assert parse("ps|run summarize") == [Pipeline((cmd("ps"), cmd("run", "summarize")))]
    assert parse("ps |\n  run summarize") == parse("ps | run summarize")   # continues a line
    assert parse("run a | run b &") == [Pipeline((cmd("run", "a"), cmd("run", "b")), True)]


# --- redirections -------------------------------------------------------------------------------

def test_redirections():
    assert parse("run x > out.txt") == [Pipeline((cmd("run", "x", redirects=[Redirect(">", "out.txt")]),))]
    assert parse("run x>>'my log'") == [Pipeline((cmd("run", "x", redirects=[Redirect(">>", "my log")]),))]
    assert parse("run <notes.txt summarize") == [
        Pipeline((cmd("run", "summarize", redirects=[Redirect("<", "notes.txt")]),))]
    both = parse("run < in > out")[0].commands[0]
    assert both.redirect("<") == Redirect("<", "in") and both.redirect(">", ">>") == Redirect(">", "out")
    assert parse("run a < in | run b >> out") == [Pipeline((
        cmd("run", "a", redirects=[Redirect("<", "in")]), cmd("run", "b", redirects=[Redirect(">>", "out")])))]


def test_redirect_positions_are_where_the_operator_is():
    r = parse("run x  >> log")[0].commands[0].redirects[0]
    assert r.pos == 7


# --- nice ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, nice, argv", [
    ("nice -n 5 run x", 5, ("run", "x")),
    ("nice -n -20 run x", -20, ("run", "x")),
    ("nice -n19 run x", 19, ("run", "x")),
    ("nice -n=3 run x", 3, ("run", "x")),
    ("nice --adjustment 4 run x", 4, ("run", "x")),
    ("nice --adjustment=-4 run x", -4, ("run", "x")),
    ("nice -7 run x", 7, ("run", "x")),
    ("nice run x", 10, ("run", "x")),
    ("nice -n 2 nice -n 3 run -n 5 x", 5, ("run", "-n", "5", "x")),   # nested: adjustments add
    ("nice -n 1 chat", 1, ("chat",)),
])
def test_nice_prefix(line, nice, argv):
    assert parse(line) == [Pipeline((cmd(*argv, nice=nice),))]


def test_quoted_nice_is_a_plain_word():
    assert parse("'nice' -n 1 x") == [Pipeline((cmd("nice", "-n", "1", "x"),))]


def test_nice_in_a_pipeline_and_background():
    assert parse("nice -n 3 run a | run b &") == [
        Pipeline((cmd("run", "a", nice=3), cmd("run", "b")), True)]


# --- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, message, incomplete", [
    ('run "hi', 'syntax error: unterminated quote `"\'', True),
    ("run 'hi", "syntax error: unterminated quote `''", True),
    ("run hi\\", "syntax error: unexpected end of input after `\\'", True),
    ("run a |", "syntax error: unexpected end of input after `|'", True),
    ("| run a", "syntax error near unexpected token `|'", False),
    ("run a | | run b", "syntax error near unexpected token `|'", False),
    ("run a | ; ps", "syntax error near unexpected token `;'", False),
    ("; ps", "syntax error near unexpected token `;'", False),
    ("& ps", "syntax error near unexpected token `&'", False),
    ("ps ; ; ps", "syntax error near unexpected token `;'", False),
    ("run a & ; ps", "syntax error near unexpected token `;'", False),
    ("run a >", "syntax error: `>' needs a file name, found end of line", False),
    ("run a > | b", "syntax error: `>' needs a file name, found `|'", False),
    ("run a >> ;", "syntax error: `>>' needs a file name, found `;'", False),
    ("run a < ''", "syntax error: `<' needs a file name, found ''", False),
    ("> out", "syntax error: a redirection needs a command", False),
    ("run a > x > y", "syntax error: output already redirected to x", False),
    ("run a > x >> y", "syntax error: output already redirected to x", False),
    ("run < x < y", "syntax error: input already redirected to x", False),
    ("run a > f | run b", "run: `>' in a pipeline: only the last command writes a file", False),
    ("run a | run b < f", "run: `<' in a pipeline: only the first command reads a file", False),
    ("run a && ps", "syntax error: `&&' is not supported (separate commands with `;')", False),
    ("run a || ps", "syntax error: `||' is not supported (separate commands with `;')", False),
    ("nice", "nice: missing command (usage: nice [-n N] COMMAND ...)", False),
    ("nice -n 3", "nice: missing command (usage: nice [-n N] COMMAND ...)", False),
    ("nice -n", "nice: option `-n' needs a number", False),
    ("nice -n x run a", "nice: invalid adjustment `x'", False),
    ("nice -q run a", "nice: unknown option `-q' (usage: nice [-n N] COMMAND ...)", False),
    ("nice -n 20 run a", "nice: adjustment 20 is out of range (-20..19)", False),
    ("nice -n 15 nice -n 15 run a", "nice: adjustment 30 is out of range (-20..19)", False),
])
def test_errors(line, message, incomplete):
    with pytest.raises(ParseError) as err:
        parse(line)
    assert str(err.value) == message
    assert err.value.incomplete is incomplete
    assert 0 <= err.value.pos <= len(line)


def test_error_position_points_at_the_offending_token():
    with pytest.raises(ParseError) as err:
        parse("ps ; run a | ; x")
    assert err.value.pos == 13


# --- job specs and process targets --------------------------------------------------------------

def test_jobspecs():
    assert parse_jobspec("%1") == JobSpec(1)
    assert parse_jobspec("%12") == JobSpec(12)
    assert parse_jobspec("%") == parse_jobspec("%%") == parse_jobspec("%+") == JobSpec(None, "+")
    assert parse_jobspec("%-") == JobSpec(None, "-")
    assert str(JobSpec(3)) == "%3" and str(JobSpec(None, "-")) == "%-"
    for bad in ("%0", "%x", "%1a", "%-1", "%٣", "1"):
        with pytest.raises(ParseError):
            parse_jobspec(bad)
    with pytest.raises(ParseError, match=r"^%x: no such job$"):
        parse_jobspec("%x")


def test_targets():
    assert parse_target("42") == 42
    assert parse_target("%2") == JobSpec(2)
    for bad in ("0", "-3", "x", "4.2", "", "٣"):
        with pytest.raises(ParseError, match="arguments must be process or job IDs"):
            parse_target(bad)


# --- properties ---------------------------------------------------------------------------------

any_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)


@given(st.lists(any_text, min_size=1, max_size=6))
def test_quoted_words_come_back_exactly(words):
    """Any words at all, quoted with shlex.quote, parse back to themselves: nothing is an operator."""
    line = " ".join(shlex.quote(w) for w in ["run", *words])
    assert parse(line) == [Pipeline((cmd("run", *words),))]


plain = st.text(st.sampled_from("ab c\t'\"\\xy-=%"), max_size=30)


@given(plain)
def test_words_agree_with_shlex_split(line):
    """Without operators or comments, the lexer reads words exactly as shlex.split does."""
    try:
        expected = shlex.split(line)
    except ValueError:
        with pytest.raises(ParseError) as err:
            tokenize(line)
        assert err.value.incomplete
        return
    assert [t.text for t in tokenize(line)] == expected


@given(any_text)
@settings(max_examples=300)
def test_any_text_parses_or_raises_parse_error(line):
    try:
        result = parse(line)
    except ParseError as e:
        assert str(e) and 0 <= e.pos <= len(line)
    else:
        assert all(p.commands and all(c.argv for c in p.commands) for p in result)


word = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12)
redirect_out = st.one_of(st.none(), st.builds(Redirect, st.sampled_from([">", ">>"]), word))
redirect_in = st.one_of(st.none(), st.builds(Redirect, st.just("<"), word))


@st.composite
def pipelines(draw):
    n = draw(st.integers(1, 3))
    commands = []
    for k in range(n):
        argv = tuple(draw(st.lists(word, min_size=1, max_size=4)))
        if argv[0] == "nice":
            argv = ("x", *argv)
        reds = [r for r in (draw(redirect_in) if k == 0 else None,
                            draw(redirect_out) if k == n - 1 else None) if r]
        nice = draw(st.one_of(st.none(), st.integers(-20, 19)))
        commands.append(Command(argv, tuple(reds), nice))
    return Pipeline(tuple(commands), draw(st.booleans()))


def test_a_quoted_newline_after_a_pipe_is_a_word():
    """Only an unquoted newline continues a pipe onto the next line (hypothesis found this)."""
    assert parse("a | '\n' b") == [Pipeline((Command(("a",)), Command(("\n", "b"))), False)]
    assert parse("a |\n b") == [Pipeline((Command(("a",)), Command(("b",))), False)]


@given(st.lists(pipelines(), max_size=4))
def test_unparse_round_trips(ps):
    assert parse(unparse(ps)) == ps


# --- the job table (shell/jobs.py) --------------------------------------------------------------

from llmos.shell.jobs import DONE, RUNNING, STOPPED, JobError, JobTable, describe_status  # noqa: E402


def test_job_numbers_and_current_previous():
    t = JobTable()
    a = t.add("run a", [10], background=True)
    b = t.add("run b", [11], background=True)
    assert (a.id, b.id) == (1, 2)
    assert t.get(None) is b and t.get("%+") is b and t.get("%-") is a and t.get("%1") is a
    t.mark(a, STOPPED)                                  # a stopped job becomes the current one
    assert t.get("%%") is a and t.mark_of(a) == "+" and t.mark_of(b) == "-"
    assert t.by_pid(11) is b and t.by_pid(99) is None
    with pytest.raises(JobError, match=r"^%3: no such job$"):
        t.get("%3")
    with pytest.raises(JobError, match=r"^%x: no such job$"):
        t.get("%x")
    t.remove(b)
    assert t.add("run c", [12]).id == 2                 # one more than the highest in use


def test_finished_jobs_are_reported_once():
    t, seen = JobTable(), []
    t.on_finish = seen.append
    a = t.add("run a", [10], background=True)
    t.finish(a, 130)
    assert seen == [a] and a.done.is_set() and a.state == DONE
    assert a.line("+") == "[1]+  Interrupt               run a"
    assert [(j.id, m) for j, m in t.reap_finished()] == [(1, "+")]
    assert t.reap_finished() == [] and len(t) == 0
    with pytest.raises(JobError, match="no current job"):
        t.get(None)


def test_running_line_and_status_words():
    t = JobTable()
    j = t.add("run a", [10], background=True)
    assert j.line("+") == "[1]+  Running                 run a &" and j.state == RUNNING
    assert [describe_status(s) for s in (0, 1, 137, 130, 143, 129, 200)] == [
        "Done", "Exit 1", "Killed", "Interrupt", "Terminated", "Hangup", "Exit 200"]


# --- what completion reads (shell/complete.py) ---------------------------------------------------

from llmos.shell.complete import words_before_cursor  # noqa: E402


@pytest.mark.parametrize("text, words, current, redirect", [
    ("", [], "", False),
    ("ki", [], "ki", False),
    ("kill -ST", ["kill"], "-ST", False),
    ("kill ", ["kill"], "", False),
    ("ps ; fg %", ["fg"], "%", False),
    ("run a | run b > ou", ["run", "b"], "ou", True),
    ("run x >", ["run", "x"], "", True),
    ("nice -n 5 ru", [], "ru", False),
    ("nice -n 5 run --sy", ["run"], "--sy", False),
    ('run "open quote', ["run"], "open quote", False),
    ("run 'a b' --", ["run", "a b"], "--", False),
])
def test_words_before_cursor(text, words, current, redirect):
    assert words_before_cursor(text) == (words, current, redirect)


def test_a_ctrl_c_is_forwarded_before_a_job_that_was_ending_anyway_finishes():
    """The handler only queues the signal; the foreground wait forwards it within FG_POLL_S, so a
    job ending 0.15 s after Ctrl-C still gets it (with 0.2 s waits it finished first: exit 0)."""
    import signal as sig
    import threading
    import time

    from llmos.kernel import abi
    from llmos.shell.jobs import Job
    from llmos.shell.sh import Shell

    sh = Shell(interactive=False, autostart=False)
    job = Job(1, "run go on", [7])
    sent = []
    sh.signal_job = lambda j, s: sent.append((j.id, s))

    def user():
        time.sleep(0.03)
        sh.on_signal(sig.SIGINT, None)      # as the handler runs: queued during the wait
        time.sleep(0.15)
        job.done.set()                      # the job ends on its own

    t = threading.Thread(target=user)
    t.start()
    assert sh.wait_fg(job, job.done) is None
    t.join()
    assert sent == [(1, abi.SIGINT)] and job.interrupted
