"""URL filtering: blocked domains and URLs from the user's files and the shipped lists, and banned
words found even when a spam URL runs them together."""

from __future__ import annotations

import pytest
from lmforge.tasks.data.filters import URLFilter
from lmforge.tasks.data.filters.url import default_list, normalise_url


@pytest.fixture
def lists(tmp_path):
    domains = tmp_path / "domains.txt"
    domains.write_text("# spam farms\nspam-farm.example\n\nWWW.Bad-Site.example\n")
    urls = tmp_path / "urls.txt"
    urls.write_text("https://news.example.org/2024/leak/\n")
    words = tmp_path / "words.txt"
    words.write_text("gambling\n")
    return {"domains": str(domains), "urls": str(urls), "words": str(words)}


def test_a_blocked_domain_blocks_its_subdomains_but_not_lookalikes(lists):
    url_filter = URLFilter(blocked_domain_files=(lists["domains"],))
    assert url_filter.reject_reason("https://spam-farm.example/a") == "blocked_domain"
    assert url_filter.reject_reason("http://cdn.www.bad-site.example/x") == "blocked_domain"
    assert url_filter.reject_reason("https://notspam-farm.example/a") is None
    assert url_filter.reject_reason("https://spam-farm.example.org/a") is None


def test_the_shipped_domain_list_applies_by_default_and_can_be_turned_off():
    blocked = "https://www.pornhub.com/view"
    assert URLFilter().reject_reason(blocked) == "blocked_domain"
    assert URLFilter(use_default_lists=False).reject_reason(blocked) is None
    assert "pornhub.com" in default_list("domains")


def test_a_blocked_url_matches_whatever_its_scheme_case_or_trailing_slash(lists):
    url_filter = URLFilter(blocked_url_files=(lists["urls"],), use_default_lists=False)
    assert url_filter.reject_reason("http://NEWS.example.org/2024/leak") == "blocked_url"
    assert url_filter.reject_reason("https://news.example.org/2024/other") is None
    assert normalise_url("HTTPS://www.Example.com/a/b/?x=1") == "example.com/a/b?x=1"


def test_banned_words_count_only_as_whole_words(lists):
    url_filter = URLFilter(banned_word_files=(lists["words"],))
    assert url_filter.reject_reason("https://x.example/best-gambling-tips") == "banned_word"
    assert url_filter.reject_reason("https://x.example/xxx/page") == "banned_word"  # default list
    assert url_filter.reject_reason("https://x.example/gamblingaddiction-help") is None


def test_soft_words_drop_a_url_only_together():
    url_filter = URLFilter()
    assert url_filter.reject_reason("https://health.example/sex-education/puberty") is None
    assert url_filter.reject_reason("https://x.example/hot-sexy-girls") == "soft_banned_words"


def test_banned_subwords_are_found_inside_run_together_words():
    url_filter = URLFilter()
    assert url_filter.reject_reason("https://freepornvideos.example/") == "banned_subword"
    assert url_filter.reject_reason("https://x.example/best_sexcam_site") == "banned_subword"
    # Innocent words that merely contain a short banned word stay.
    assert url_filter.reject_reason("https://essex.example/xxl-sizes/sussex") is None


def test_documentation_urls_pass():
    url_filter = URLFilter()
    for url in ("https://manpages.debian.org/bookworm/manpages/sex.7.html",
                "https://docs.python.org/3.11/library/http.cookies.html",
                "https://debian-handbook.info/browse/ja-JP/stable/sect.adult-content.html"):
        assert url_filter.reject_reason(url) is None, url


def test_a_missing_list_file_is_a_clear_error_when_the_config_is_made(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.txt"):
        URLFilter(blocked_domain_files=(str(tmp_path / "nothere.txt"),))
