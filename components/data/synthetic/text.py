"""What the world's rows say in words: job descriptions, post and course texts, member
headlines and ``about`` sections.

Why apart from the sampling: these templates are what a language model reads, so they
are where wording changes go; they draw no randomness (template choices arrive as
arrays drawn in :mod:`.entities`), so editing them changes text, never the draws.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from components.data.synthetic.vocabulary import (
    CITIES,
    INDUSTRIES,
    JOB_YEARS,
    LEVELS,
    ROLES_PER_INDUSTRY,
    SENIORITIES,
    TITLES,
    TOPICS,
    WORKPLACES,
)


def _a(word: str) -> str:
    return "an" if word[:1] in "AEIOU" else "a"


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def job_texts(
    ind: np.ndarray,
    role: np.ndarray,
    sen: np.ndarray,
    comp: np.ndarray,
    city: np.ndarray,
    work: np.ndarray,
    skills: list[list[str]],
    tmpl: np.ndarray,
    c_name: np.ndarray,
) -> tuple[list[str], list[str]]:
    """(titles, descriptions) of job posts from their drawn codes (one of 3 templates each)."""
    titles, texts = [], []
    for r in range(len(ind)):
        I_ = INDUSTRIES[ind[r]]
        title = TITLES[(ind[r] * ROLES_PER_INDUSTRY + role[r]) * len(SENIORITIES) + sen[r]]
        co, loc, wp, sk = (
            c_name[comp[r]],
            CITIES[city[r]],
            WORKPLACES[work[r]],
            ", ".join(skills[r]),
        )
        yrs = (
            "No prior experience required."
            if JOB_YEARS[sen[r]] == 0
            else (f"{JOB_YEARS[sen[r]]}+ years of experience in {I_.name.lower()} preferred.")
        )
        texts.append(
            (
                f"{co} is hiring {_a(title)} {title} in {loc} ({wp}). You will work with {sk}. {yrs}",
                f"Join {co} as {_a(title)} {title}. Must-have skills: {sk}. {wp} role based in {loc}. {yrs}",
                f"We are looking for {_a(title)} {title} to grow our {I_.function.lower()} team in {loc} "
                f"({wp}). Tools: {sk}. {yrs}",
            )[tmpl[r]]
        )
        titles.append(title)
    return titles, texts


def post_texts(
    ind: np.ndarray,
    topic: np.ndarray,
    comp: np.ndarray,
    a_role: np.ndarray,
    a_sen: np.ndarray,
    skills: list[list[str]],
    tmpl: np.ndarray,
    tmpl2: np.ndarray,
    num: np.ndarray,
    c_name: np.ndarray,
) -> tuple[list[str], list[str], list[str]]:
    """(titles, texts, author titles) of feed posts: 8 title and 4 body templates, hashtags."""
    titles, texts, authors = [], [], []
    for r in range(len(ind)):
        I_ = INDUSTRIES[ind[r]]
        tp, sk, co = TOPICS[topic[r]], skills[r][0], c_name[comp[r]]
        rl = I_.roles[a_role[r]]
        author = TITLES[(ind[r] * ROLES_PER_INDUSTRY + a_role[r]) * len(SENIORITIES) + a_sen[r]]
        title = (
            f"{num[r]} lessons from a year of {sk}",
            f"Why {tp} will look different next year",
            f"How we scaled {sk} at {co}",
            f"Hiring: our {I_.function.lower()} team at {co} is growing",
            f"My take on {tp}: hype vs. reality",
            f"A practical guide to {sk} for {rl}s",
            f"What nobody tells you about {tp}",
            f"Celebrating {num[r]} years at {co}",
        )[tmpl[r]]
        body = (
            f"Sharing a few thoughts on {tp} from my work as {_a(author)} {author}.",
            f"We leaned on {_and(skills[r])} this quarter and learned a lot.",
            f"The {I_.name.lower()} world is moving fast; here is what I see in {tp}.",
            f"Curious how other {rl}s approach {sk}? Let's discuss in the comments.",
        )[tmpl2[r]]
        tags = " ".join("#" + "".join(ch for ch in s if ch.isalnum()) for s in skills[r])
        titles.append(title)
        texts.append(f"{title}. {body} {tags}")
        authors.append(author)
    return titles, texts, authors


def course_texts(
    ind: np.ndarray,
    topic: np.ndarray,
    role: np.ndarray,
    level: np.ndarray,
    skills: list[list[str]],
    tmpl: np.ndarray,
    hours: np.ndarray,
) -> tuple[list[str], list[str]]:
    """(titles, descriptions) of courses: two title templates per level."""
    titles, texts = [], []
    for r in range(len(ind)):
        sk, rl, lv = skills[r][0], INDUSTRIES[ind[r]].roles[role[r]], LEVELS[level[r]]
        title = (
            (f"{sk} Essentials", f"Intro to {sk}"),
            (f"{sk} in Practice", f"Applied {sk} for {rl}s"),
            (f"Advanced {sk}", f"Mastering {sk}"),
        )[level[r]][tmpl[r]]
        titles.append(title)
        texts.append(
            f"{_a(lv).title()} {lv.lower()} course on {TOPICS[topic[r]]}: learn {_and(skills[r])}. "
            f"{hours[r]} hours, for {rl}s and anyone moving into {INDUSTRIES[ind[r]].name.lower()}."
        )
    return titles, texts


def member_headline() -> pl.Expr:
    """The members' ``headline``: title, company, top 3 skills, #OpenToWork when open.

    Reads the columns ``generate_members`` builds: title, company, _s1.._s3, open_to_work."""
    headline = pl.format("{} at {} | {}, {}, {}", "title", "company", "_s1", "_s2", "_s3")
    return pl.when("open_to_work").then(headline + pl.lit(" | #OpenToWork")).otherwise(headline)


def member_about() -> pl.Expr:
    """The members' ``about``: experience and top skills, the hidden interests for members
    who reveal them (_reveal, _t1, _t2), and whether they are open to work."""
    return pl.concat_str(
        [
            pl.format(
                "{} with {} {} of experience in {}. Skilled in {}, {} and {}.",
                "title",
                "years_experience",
                pl.when(pl.col("years_experience") == 1)
                .then(pl.lit("year"))
                .otherwise(pl.lit("years")),
                pl.col("industry").str.to_lowercase(),
                "_s1",
                "_s2",
                "_s3",
            ),
            pl.when("_reveal")
            .then(pl.format(" Interested in {} and {}.", "_t1", "_t2"))
            .otherwise(pl.lit("")),
            pl.when("open_to_work")
            .then(pl.lit(" Open to new opportunities."))
            .otherwise(pl.lit("")),
        ]
    )
