"""Writes examples/jobs.jsonl: the demo's job file (extraction, summarization, classification,
generation), deterministic, with the mix a support/back-office team would send.

    python examples/make_jobs.py [N] > examples/jobs.jsonl
"""

from __future__ import annotations

import json
import random
import sys

CUSTOMERS = [("acme", "enterprise"), ("globex", "pro"), ("initech", "free"), ("umbrella", "pro")]

INVOICES = [
    ("Northwind Traders", "INV-2291", "2025-03-14", "1,240.50 EUR"),
    ("Contoso Ltd", "INV-0042", "2025-04-02", "980.00 USD"),
    ("Fabrikam", "F-77812", "2025-05-21", "15,300.00 USD"),
    ("Tailspin Toys", "TT-310", "2025-06-09", "212.99 GBP"),
]
TICKETS = [
    "My card was charged twice for the same order, please refund one of them.",
    "The app crashes every time I open the settings page on Android 14.",
    "How do I change the email address on my account?",
    "I love the new dashboard, the export button saves me an hour a week!",
    "Your courier left the parcel in the rain and the box is soaked.",
    "Can I upgrade from the monthly plan to the yearly plan mid-cycle?",
]
ARTICLE_PARAS = [
    "The city council voted on Tuesday to extend the tram line to the northern suburbs, a project "
    "that has been debated for more than a decade. Supporters argue that the extension will cut "
    "commuting times by half for thirty thousand residents, while critics point to the cost overruns "
    "of the previous phase and question whether ridership forecasts are realistic.",
    "Quarterly revenue rose eight percent year over year, driven mostly by subscription renewals in "
    "the enterprise segment. Hardware sales declined for the third quarter in a row, and the company "
    "said it would stop selling two legacy product lines by the end of the year to focus on software.",
    "Researchers reported that a new coating for solar panels reduces dust accumulation by forty "
    "percent in desert conditions. Field tests over eighteen months showed that panels with the coating "
    "needed cleaning less than half as often, which matters in regions where water is scarce.",
    "The hospital introduced a triage assistant that suggests the order in which patients in the "
    "emergency department should be seen. Nurses can override every suggestion, and the hospital "
    "says waiting times for the most urgent cases fell by twelve minutes on average.",
]
OPEN_TASKS = [
    "Write a friendly onboarding email for new users of a budgeting app, three short paragraphs.",
    "Draft release notes for version 2.4 of a note-taking app that adds offline sync and dark mode.",
    "Explain to a new employee how our expense policy works for travel under 500 euros.",
    "Propose a plan to migrate a monolith to services over two quarters with a team of six, with risks.",
    "Write a short product description for a stainless steel water bottle that keeps drinks cold.",
]


def extraction(rng: random.Random, i: int) -> dict[str, object]:
    vendor, number, date, total = rng.choice(INVOICES)
    text = f"Invoice {number} from {vendor}, issued {date}. Amount due: {total}. Payment within 30 days."
    return {
        "task": "extraction",
        "feature": "invoice-extraction",
        "prompt": f"Extract vendor, invoice number, date and total as JSON from: {text}",
        "max_output_tokens": 120,
    }


def summarization(rng: random.Random, i: int) -> dict[str, object]:
    paras = rng.sample(ARTICLE_PARAS, k=rng.randint(1, 3))
    return {
        "task": "summarization",
        "feature": "news-digest",
        "prompt": "Summarize in two sentences:\n\n" + "\n\n".join(paras),
        "max_output_tokens": 150,
    }


def classification(rng: random.Random, i: int) -> dict[str, object]:
    ticket = rng.choice(TICKETS)
    return {
        "task": "classification",
        "feature": "support-triage",
        "prompt": f"Classify this support ticket as billing, bug, account, praise or shipping: {ticket}",
        "max_output_tokens": 10,
    }


def generation(rng: random.Random, i: int) -> dict[str, object]:
    task = rng.choice(OPEN_TASKS)
    context = " ".join(rng.sample(ARTICLE_PARAS, k=rng.randint(1, 4)))
    return {
        "task": "generation",
        "feature": rng.choice(["content", "content", "architecture"]),
        "prompt": f"{task}\n\nBackground:\n{context}",
        "max_output_tokens": 400,
    }


def analysis(rng: random.Random, i: int) -> dict[str, object]:
    a, b = rng.sample(ARTICLE_PARAS, k=2)
    return {
        "task": "generation",
        "feature": "research",
        "messages": [
            {"role": "system", "content": "You are a careful analyst."},
            {"role": "user", "content": f"Compare these two reports and analyze what they imply:\n{a}\n---\n{b}"},
        ],
        "max_output_tokens": 300,
    }


KINDS = [(extraction, 30), (summarization, 25), (classification, 25), (generation, 12), (analysis, 8)]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    rng = random.Random(7)
    makers = [m for m, weight in KINDS for _ in range(weight)]
    for i in range(n):
        job = rng.choice(makers)(rng, i)
        customer, plan = rng.choice(CUSTOMERS)
        job = {"id": f"demo-{i:05d}", "customer": customer, **job, "metadata": {"plan": plan}}
        print(json.dumps(job))


if __name__ == "__main__":
    main()
