"""Unit tests for stepbuild.frontend.words: operators, quoting, escapes, splitting, errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepbuild.errors import ExpansionError, StepfileError
from stepbuild.frontend.words import EXPANDING_INSTRUCTIONS, Expansion, Lexer, expand, split_words

ENV = {"V": "abc", "EMPTY": "", "P": "/usr/local/lib.tar.gz", "S": "a  b", "한": "ko"}


def fails(word: str, env: dict[str, str] | None = None, escape: str = "\\") -> ExpansionError:
    with pytest.raises(ExpansionError) as info:
        expand(word, ENV if env is None else env, escape)
    return info.value


# --- plain references -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "word, want",
    [
        ("$V", "abc"),
        ("${V}", "abc"),
        ("x${V}y", "xabcy"),
        ("$Vx", ""),  # the name is as long as possible
        ("$v", ""),  # names are case-sensitive
        ("$한", "ko"),  # Unicode letters are name characters
        ("$", "$"),
        ("$.", "$."),
        ("a$ b", "a$ b"),
        ("$1x", "x"),  # positional parameters are unset
        ("$999abc", "abc"),
        ("$@$#$$", ""),  # special parameters are one character each
        ("${V}}", "abc}"),
    ],
)
def test_references(word: str, want: str) -> None:
    assert expand(word, ENV) == want


# --- operators -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "word, want",
    [
        ("${V:-d}", "abc"),
        ("${EMPTY:-d}", "d"),
        ("${UNSET:-d}", "d"),
        ("${V-d}", "abc"),
        ("${EMPTY-d}", ""),  # without `:` an empty value counts as set
        ("${UNSET-d}", "d"),
        ("${V:+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${UNSET:+alt}", ""),
        ("${V+alt}", "alt"),
        ("${EMPTY+alt}", "alt"),
        ("${UNSET+alt}", ""),
        ("${V?msg}", "abc"),
        ("${EMPTY?msg}", ""),
        ("${V:?msg}", "abc"),
        ("${UNSET:-${V:-x}}", "abc"),  # nested defaults
        ("${UNSET:-a b}", "a b"),
        ("${UNSET:-\\}}", "}"),  # an escaped brace does not end the word
    ],
)
def test_default_alternative_and_check(word: str, want: str) -> None:
    assert expand(word, ENV) == want


@pytest.mark.parametrize(
    "word, want",
    [
        ("${P#*/}", "usr/local/lib.tar.gz"),  # shortest prefix
        ("${P##*/}", "lib.tar.gz"),  # longest prefix
        ("${P%.*}", "/usr/local/lib.tar"),  # shortest suffix
        ("${P%%.*}", "/usr/local/lib"),  # longest suffix
        ("${P#nomatch}", "/usr/local/lib.tar.gz"),
        ("${P#}", "/usr/local/lib.tar.gz"),
        ("${P#/?sr}", "/local/lib.tar.gz"),  # ? is one character
        ("${P/l/L}", "/usr/Local/lib.tar.gz"),  # first match only
        ("${P//l/L}", "/usr/LocaL/Lib.tar.gz"),  # every match
        ("${P//\\//_}", "_usr_local_lib.tar.gz"),  # \/ is a literal slash in a pattern
        ("${P/*/x}", "x"),  # * is greedy in a replacement
        ("${V//$EMPTY/-}", "-a-b-c-"),  # empty pattern matches between characters
        ("${UNSET//a/b}", ""),
        ("${V///}", "abc"),
    ],
)
def test_pattern_operators(word: str, want: str) -> None:
    assert expand(word, ENV) == want


def test_pattern_escapes_are_literal() -> None:
    env = {"F": "a*b?c\\d", "STAR": "a***yy*"}
    assert expand("${F#a\\*}", env) == "b?c\\d"
    assert expand("${F%\\\\d}", env) == "a*b?c"
    assert expand("${F/\\?/Q}", env) == "a*bQc\\d"
    assert expand("${STAR%%\\**\\*}", env) == "a"
    assert "invalid escape" in fails("${F#\\x}", env).message


def test_greedy_marker_is_read_after_expansion() -> None:
    # `${v#$P}` with P="#*x" is `${v##*x}`: BuildKit checks the expanded word.
    assert expand("${V#$P}", {"V": "xxa", "P": "#*x"}) == "a"
    assert expand("${V#$P}", {"V": "xxa", "P": "*x"}) == "xa"


def test_replace_all_uses_go_semantics() -> None:
    # Go's ReplaceAllString skips an empty match right after a match (re.sub gives "--").
    assert expand("${V//*/-}", ENV) == "-"
    # The replacement of `//` is a Go template: `$0` is the match, `$$` a dollar.
    assert expand("${V//b/'<$0>'}", ENV) == "a<b>c"
    assert expand("${V//b/'$$'}", ENV) == "a$c"
    assert expand("${V//b/'$x$'}", ENV) == "a$c"
    # A single replacement is inserted literally.
    assert expand("${V/b/'$0'}", ENV) == "a$0c"


def test_question_mark_errors_name_the_variable() -> None:
    assert fails("${UNSET?you must set it}").message.endswith("UNSET: you must set it")
    assert fails("${UNSET?}").message.endswith("UNSET: is not allowed to be unset")
    assert fails("${EMPTY:?}").message.endswith("EMPTY: is not allowed to be empty")
    assert fails("${EMPTY:?need it}").message.endswith("EMPTY: need it")


@pytest.mark.parametrize(
    "word",
    [
        "${V=x}",
        "${V:=x}",
        "${UNSET:=x}",  # assignment is not supported
        "${}",
        "${.}",
        "x${}y",
        "${:}",
        "${:-x}",
        "${{V}",
        "${ V}",
        "${V x}",  # bad names
        "${V",
        "${V:-x",
        "${",
        "${V/a",
        "${V//a}",  # unterminated
        "${V:#x}",
        "${V:%x}",
        "${V:x}",
        "${#V}",  # unsupported modifiers
        "'abc",
        '"abc',
        'x"ab\\"',
        "${V:-'x}",  # unterminated quotes
    ],
)
def test_errors(word: str) -> None:
    err = fails(word)
    assert isinstance(err, StepfileError)
    assert err.position is None  # the caller adds it


# --- quotes and escapes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "word, want",
    [
        ("'$V \\x'", "$V \\x"),  # single quotes keep everything
        ('"$V"', "abc"),
        ('"a\\"b"', 'a"b'),
        ('"\\$V"', "$V"),
        ('"a\\\\b"', "a\\b"),
        ('"a\\tb"', "a\\tb"),  # other escapes stay literal inside double quotes
        ('"it\'s"', "it's"),
        ("'say \"hi\"'", 'say "hi"'),
        ("a\\tb", "atb"),  # outside quotes the escape character escapes anything
        ("\\$V", "$V"),
        ("\\'x", "'x"),
        ("abc\\", "abc"),  # a trailing lone escape is dropped
        ("abc\\\\", "abc\\"),
        ("he'll'o", "hello"),
    ],
)
def test_quotes_and_backslash(word: str, want: str) -> None:
    assert expand(word, ENV) == want


@pytest.mark.parametrize(
    "word, want",
    [
        ("\\$V", "\\abc"),  # the backslash is an ordinary character
        ("C:\\dir\\$V", "C:\\dir\\abc"),
        ("`$V", "$V"),
        ("a`tb", "atb"),
        ('"a`"b"', 'a"b'),
        ('"`$V"', "$V"),
        ('"a\\"', "a\\"),  # so it cannot escape a quote
        ('"a``b"', "a`b"),
        ("abc`", "abc"),
        ("${UNSET:-`}}", "}"),
    ],
)
def test_backtick_escape(word: str, want: str) -> None:
    assert expand(word, ENV, escape="`") == want
    assert Lexer("`").process_word(word, ENV) == want


def test_bad_escape_character_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        Lexer("x")


def test_leading_byte_order_mark_is_skipped() -> None:
    assert expand("\ufeff$V", ENV) == "abc"  # Go's text/scanner drops it


# --- words -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, want",
    [
        ("a b\tc", ["a", "b", "c"]),
        ("  a  ", ["a"]),
        ("", []),
        ("x${S}y", ["xa", "by"]),  # unquoted expansions are split
        ('x"${S}"y', ["xa  by"]),  # quoted ones are not
        ("a\\ b", ["a b"]),  # an escaped space joins
        ("'a b' c", ["a b", "c"]),
        ("'' \"\" x", ["x"]),  # an empty quoted word disappears
        ("${UNSET:-p q}", ["p", "q"]),
        ("a\u00a0b", ["a", "b"]),  # Go splits on Unicode white space ...
        ("a\x1cb", ["a\x1cb"]),  # ... but not on the separators str.isspace accepts
    ],
)
def test_split_words(text: str, want: list[str]) -> None:
    assert split_words(text, ENV) == want
    assert Lexer().process_words(text, ENV) == want


def test_operator_inside_a_word_keeps_the_word_start() -> None:
    # Deliberate divergence: BuildKit's lex.go shares one word buffer between nested
    # processStopOn calls and so would return ["ay"] here (the "x" is lost).
    assert split_words("x${UNSET:-a}y", {}) == ["xay"]
    assert split_words("80/${PROTO:-tcp}", {}) == ["80/tcp"]


def test_split_words_with_backtick_escape() -> None:
    assert split_words("a` b c\\ d", {}, escape="`") == ["a b", "c\\", "d"]


def test_split_errors() -> None:
    with pytest.raises(ExpansionError):
        split_words('a "b', ENV)


# --- matches ---------------------------------------------------------------------------------


def test_matches() -> None:
    got = Lexer().process_word_with_matches("$V ${EMPTY:-x} ${UNSET} ${ALSO:-$V}", ENV)
    assert got == Expansion(
        value="abc x  abc",
        matched=frozenset({"V", "EMPTY"}),
        unmatched=frozenset({"UNSET", "ALSO"}),
        words=("abc", "x", "abc"),
    )


def test_matches_include_unused_branches() -> None:
    # Like BuildKit, the word of an operator is expanded even when it is not used.
    got = Lexer().process_word_with_matches("${V:-$OTHER}", ENV)
    assert got.value == "abc" and got.unmatched == {"OTHER"}


def test_expanding_instructions() -> None:
    assert {
        "add",
        "copy",
        "env",
        "expose",
        "from",
        "label",
        "stopsignal",
        "user",
        "volume",
        "workdir",
        "arg",
    } == EXPANDING_INSTRUCTIONS
    assert "onbuild" not in EXPANDING_INSTRUCTIONS and "run" not in EXPANDING_INSTRUCTIONS


def test_deep_nesting_is_an_expansion_error() -> None:
    word = "${A:-" * 2000 + "x" + "}" * 2000
    with pytest.raises(ExpansionError):
        expand(word, {})


# --- property: random text never escapes as anything but ExpansionError ----------------------

TEXT = st.text(
    alphabet=st.sampled_from(list("$${}:-+?#%/=\\`'\" \tabV0@.*\n")) | st.characters(), max_size=40
)
ENVS = st.dictionaries(
    st.sampled_from(["V", "a", "b", "ab", "0", "@"]),
    st.text(alphabet="ab*?\\/ $#%", max_size=6),
    max_size=4,
)


@settings(max_examples=400, deadline=None)
@given(text=TEXT, env=ENVS, escape=st.sampled_from(["\\", "`"]))
def test_random_text_returns_or_raises_expansion_error(
    text: str, env: dict[str, str], escape: str
) -> None:
    lexer = Lexer(escape)
    for call in (lexer.process_word, lexer.process_words, lexer.process_word_with_matches):
        try:
            result = call(text, env)
        except ExpansionError:
            continue
        assert isinstance(result, (str, list, Expansion))
        if isinstance(result, list):
            assert all(isinstance(word, str) and word for word in result)
