"""Texts and pages for the data-stage tests: prose that a quality filter must keep, junk that it
must drop, and HTML pages wrapping them. Written for these tests."""

from __future__ import annotations

from html import escape

from lmforge.tasks.data.warc_writer import WarcWriter

ARTICLES_EN = {
    "backups": [
        "A backup that has never been restored is only a hope. The first rule of any backup plan "
        "is therefore to test the restore path regularly, on a machine that is not the one being "
        "protected, and to write down every step that was needed.",
        "Most small offices start with a nightly copy of the home directories to an external "
        "disk. That works until the disk fails silently or the office is flooded. A second copy "
        "kept off site, even if it is only refreshed once a week, removes that single point of "
        "failure and costs very little.",
        "Incremental backups save space by storing only the files that changed since the last "
        "run. They make restores slower, because the tool has to replay a chain of increments, "
        "so it is worth taking a full snapshot at a fixed interval to keep that chain short.",
        "Finally, remember that a backup of a running database is rarely consistent if it is "
        "taken by copying files. Use the dump command that the database provides, or stop the "
        "service for a moment, and check the size of the result against the previous night.",
    ],
    "printing": [
        "Network printers are configured through the CUPS web interface or with the lpadmin "
        "command. Both end up writing the same queue definition, so it does not matter which "
        "one you use as long as you stick to it and keep a record of the options you chose.",
        "When a job stays in the queue forever, look at the error log before restarting "
        "anything. The log usually names the filter that failed, and the fix is often a "
        "missing driver package rather than a problem with the printer itself.",
        "Shared printers can be announced to the local network with a discovery protocol. "
        "This is convenient for laptops that move between offices, but it also means that a "
        "visitor can print to your expensive colour device unless you restrict the queue.",
        "Paper jams and empty toner cartridges are reported back to the server by most modern "
        "devices. Setting up an e-mail alert for these events saves a lot of walking around, "
        "and the alert can be routed to whoever is responsible for supplies that week.",
    ],
    "time": [
        "Computers keep time with a cheap crystal oscillator that drifts by a few seconds every "
        "day. Left alone, two servers will disagree by minutes within a month, and log files "
        "from different machines can no longer be compared with any confidence.",
        "The network time protocol solves this by asking several reference servers for the "
        "current time, estimating the delay of each answer, and slowly adjusting the local "
        "clock. It avoids sudden jumps, which some programs handle very badly.",
        "A client should talk to at least four servers. With fewer, one server that reports "
        "the wrong time cannot be outvoted, and the client may follow it without noticing "
        "that anything is wrong until a certificate suddenly appears to have expired.",
        "Virtual machines add their own difficulties, because the guest clock stops whenever "
        "the host pauses it. Most hypervisors offer a driver that corrects the guest after a "
        "pause, and it is wise to enable it before the first complaint arrives.",
    ],
    "packages": [
        "A package manager keeps track of which files belong to which program, so that "
        "removing a program does not leave pieces of it scattered across the system. It also "
        "records dependencies, which is what allows a single command to install a whole stack.",
        "Before upgrading a production server, read the release notes of the packages that "
        "will change. Most upgrades are uneventful, but a configuration format that changed "
        "between versions can stop a service from starting after the next reboot.",
        "Pinning lets an administrator hold one package at a known version while the rest of "
        "the system moves on. It is a useful emergency measure, yet a pin that is forgotten "
        "for a year becomes a security problem of its own, so note why it was added.",
        "Third-party repositories are convenient and risky in equal measure. Each one adds a "
        "signing key that the system will trust for every package it offers, which is a "
        "great deal of trust to give to a vendor that only wanted to ship one tool.",
    ],
}

ARTICLE_DE = [
    "Eine Datensicherung, die nie zurückgespielt wurde, ist nur eine Hoffnung. Deshalb sollte "
    "man die Wiederherstellung regelmäßig auf einem anderen Rechner ausprobieren und jeden "
    "Schritt aufschreiben, der dafür nötig war.",
    "Viele kleine Büros beginnen mit einer nächtlichen Kopie der Benutzerverzeichnisse auf eine "
    "externe Festplatte. Das funktioniert, bis die Platte unbemerkt ausfällt. Eine zweite Kopie "
    "außer Haus beseitigt diese Schwachstelle und kostet sehr wenig.",
    "Inkrementelle Sicherungen sparen Platz, weil sie nur die geänderten Dateien speichern. Die "
    "Wiederherstellung dauert dafür länger, also lohnt sich in festen Abständen eine vollständige "
    "Sicherung, damit die Kette der Zwischenstände kurz bleibt.",
]

ARTICLE_RU = [
    "Резервная копия, которую ни разу не восстанавливали, остаётся лишь надеждой. Поэтому "
    "восстановление нужно регулярно проверять на другой машине и записывать каждый шаг, который "
    "для этого потребовался.",
    "Многие небольшие офисы начинают с ночного копирования домашних каталогов на внешний диск. "
    "Это работает, пока диск не выйдет из строя незаметно для всех. Вторая копия, хранящаяся "
    "вне офиса, устраняет эту слабость и почти ничего не стоит.",
    "Инкрементные копии экономят место, потому что сохраняют только изменённые файлы. Зато "
    "восстановление занимает больше времени, поэтому полезно время от времени делать полную "
    "копию, чтобы цепочка изменений оставалась короткой.",
]

ARTICLE_JA = [
    "一度も復元したことのないバックアップは、ただの願いにすぎません。そのため、復元の手順を別の"
    "マシンで定期的に試し、必要だった作業をすべて書き留めておくことが大切です。",
    "多くの小さな事務所では、毎晩ホームディレクトリを外付けディスクにコピーすることから始めます。"
    "ディスクが気付かれないまま壊れるまでは、これで十分に機能します。事務所の外に二つ目の"
    "コピーを置けば、この弱点はほとんど費用をかけずに取り除けます。",
    "増分バックアップは変更されたファイルだけを保存するので、容量を節約できます。その代わりに"
    "復元には時間がかかるため、一定の間隔で完全なバックアップを取り、差分の連鎖を短く保つと"
    "よいでしょう。",
]

ARTICLE_ZH = [
    "从未恢复过的备份只是一种希望。因此，应当定期在另一台机器上测试恢复过程，并记下所需的每一个"
    "步骤。",
    "许多小型办公室一开始每晚把用户目录复制到一块外接硬盘上。在硬盘悄无声息地损坏之前，这种做法"
    "一直有效。在办公室以外保存第二份副本，可以几乎不花钱地消除这个弱点。",
    "增量备份只保存发生变化的文件，因此可以节省空间。不过恢复需要更长的时间，所以最好按固定的"
    "间隔做一次完整备份，使增量链保持较短。",
]

# Traditional characters, for Big5.
ARTICLE_ZH_TW = [
    "從未恢復過的備份只是一種希望。因此，應當定期在另一台機器上測試恢復過程，並記下所需的每一個"
    "步驟。",
    "許多小型辦公室一開始每晚把使用者目錄複製到一塊外接硬碟上。在硬碟悄無聲息地損壞之前，這種做法"
    "一直有效。在辦公室以外保存第二份副本，可以幾乎不花錢地消除這個弱點。",
]

SPAM_WORDS = ["cheap", "pills", "casino", "loan", "replica", "watches", "bonus", "download",
              "win", "prize", "offer", "deal", "shipping", "crypto", "ranking"]  # fmt: skip
# Spam words in a shuffled order, as stuffing pages have them (no repeated phrase to catch).
KEYWORD_STUFFING = " ".join(SPAM_WORDS[(i * 7 + i // 15) % 15] for i in range(300))
REPEATED_LINES = "\n".join(["Best casino bonus today, click here now!"] * 40)
SYMBOL_SOUP = " ".join(["@$%^&*", "[]<>", "|~+=", "***", "%%%$$", "\\//"] * 40)
BULLET_SPAM = "\n".join(f"• buy cheap item number {n} now" for n in range(60))


def paragraphs_text(paragraphs: list[str]) -> str:
    return "\n\n".join(paragraphs)


def html_page(
    title: str,
    paragraphs: list[str],
    *,
    site: str = "Example Docs",
    lang: str = "en",
    charset_meta: str | None = None,
) -> str:
    """A page with site navigation and a footer around an `<article>` of paragraphs."""
    meta = f'<meta charset="{charset_meta}">' if charset_meta else ""
    body = "\n".join(f"<p>{escape(p)}</p>" for p in paragraphs)
    nav = " ".join(f'<li><a href="/{n}">{n.title()}</a></li>' for n in ("home", "docs", "blog"))
    return (
        f'<!DOCTYPE html><html lang="{lang}"><head>{meta}<title>{escape(title)}</title></head>'
        f"<body><header><nav><ul>{nav}</ul></nav></header>"
        f"<main><article><h1>{escape(title)}</h1>\n{body}\n</article></main>"
        f"<footer><p>{escape(site)} | Contact | Privacy | Terms</p></footer></body></html>"
    )


class CorruptingWarcWriter(WarcWriter):
    """A WarcWriter that can also plant bytes between records, as damaged crawl files have."""

    def write_raw(self, data: bytes) -> None:
        """Writes `data` unchanged (no gzip member, no headers)."""
        self._require_open().write(data)
