# ruff: noqa: E501 (the hand-written pairs are data, one answer a line)
"""Generate the real answers behind ``thinktank/eval/data/equivalence-long.jsonl``.

Runs the packaged local models (Gemma 3 270M and SmolLM2 135M, greedy and the three
sampled variants each) on open questions that take a sentence or three, and writes one
JSON line per answer (question, model, seed, answer) to the output file. Pairs of
answers to one question were then labelled by hand by their meaning (see the data
README). Needs the local models; not run in tests.

    python bench/equivalence_long_generate.py /tmp/long-answers.jsonl      # ask the models
    python bench/equivalence_long_generate.py build /tmp/long-answers.jsonl \
        > thinktank/eval/data/equivalence-long.jsonl                        # label the pairs
"""

from __future__ import annotations

import asyncio
import json
import sys

from thinktank.providers.base import ModelRequest
from thinktank.providers.local import LOCAL_VARIANTS, LocalLlamaModel

QUESTIONS = (
    "Why is the sky blue?",
    "What does a thermometer measure?",
    "Why do we have seasons?",
    "Why do objects fall to the ground?",
    "What do plants need to grow?",
    "Why does ice float on water?",
    "What causes the tides?",
    "Why do we need to sleep?",
    "What does the heart do?",
    "Why does metal feel cold to the touch?",
    "What is photosynthesis?",
    "Why do leaves change colour in autumn?",
    "What causes thunder?",
    "Why is the ocean salty?",
    "What does a compass show?",
    "Why do we sweat?",
    "What is a vaccine for?",
    "Why does bread rise?",
    "What causes rain?",
    "Why is the Moon visible at night?",
    "What do bees make?",
    "Why do we breathe?",
    "What is the job of the lungs?",
    "Why does a balloon filled with helium float?",
    "What causes an echo?",
    "Why do stars twinkle?",
    "What does the stomach do?",
    "Why does salt melt ice on roads?",
    "What is the Sun made of?",
    "Why do cats purr?",
)
"""The open questions (each answered by every variant)."""

MODELS = ("local", "local-s1", "local-s2", "local-s3", "smollm2", "smollm2-s1", "smollm2-s2")
SEED = 15
"""The request seed; each variant derives its sampler seed from it, its name and the prompt."""
PROMPT = "Answer in one to three sentences.\n\n{question}"


async def ask_all(path: str) -> None:
    """Ask every model every question, writing each answer to ``path`` as it comes."""
    for name in MODELS:
        model = LocalLlamaModel(name, LOCAL_VARIANTS[name])
        for question in QUESTIONS:
            request = ModelRequest(
                prompt=PROMPT.format(question=question), seed=SEED, max_tokens=120
            )
            response = await model.complete(request)
            record = {
                "question": question,
                "model": name,
                "seed": SEED,
                "answer": response.content.strip(),
            }
            _append(path, record)


def _append(path: str, record: dict[str, object]) -> None:
    """Append one JSON line (a crash keeps the answers so far)."""
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")


# Labels, written by reading the answers before any similarity was computed: for each
# question, the main claim of each answer, in the order of MODELS.
# Equal letters state the same main answer; "-" marks an empty answer (left out); a
# letter used once is an answer no other shares (a non-answer, an echo of the question,
# or a different claim).
CLAIMS: dict[str, str] = {
    "Why is the sky blue?": "ABCDEEF",
    "What does a thermometer measure?": "AAAAAAA",
    "Why do we have seasons?": "ABCAEFG",
    "Why do objects fall to the ground?": "ABCDCCC",
    "What do plants need to grow?": "ABCAEFG",
    "Why does ice float on water?": "ABCDEFE",
    "What causes the tides?": "AB-CAFA",
    "Why do we need to sleep?": "ABCBBBB",
    "What does the heart do?": "ABAAEAA",
    "Why does metal feel cold to the touch?": "ABCDEFG",
    "What is photosynthesis?": "AABCABA",
    "Why do leaves change colour in autumn?": "ABCDEFG",
    "What causes thunder?": "ABCDEFG",
    "Why is the ocean salty?": "ABCDAFG",
    "What does a compass show?": "ABCAAFG",
    "Why do we sweat?": "ABCAAAA",
    "What is a vaccine for?": "A-AAAAA",
    "Why does bread rise?": "AABBEFE",
    "What causes rain?": "ABCDEFF",
    "Why is the Moon visible at night?": "ABBAEFG",
    "What do bees make?": "ABABEBA",
    "Why do we breathe?": "ABCDEFG",
    "What is the job of the lungs?": "AABAAAA",
    "Why does a balloon filled with helium float?": "AABDEFG",
    "What causes an echo?": "ABCDEEE",
    "Why do stars twinkle?": "ABCDEFG",
    "What does the stomach do?": "ABCACCC",
    "Why does salt melt ice on roads?": "ABCDEFG",
    "What is the Sun made of?": "ABCDEEA",
    "Why do cats purr?": "ABCDEEG",
}
LABELLED = MODELS

# Hand-written hard cases: paraphrases sharing few words, and contradictions sharing
# most of them (negations, swapped or changed numbers, opposite comparatives).
HAND: tuple[tuple[str, str, bool, str], ...] = (
    # paraphrases with few or no shared words
    (
        "The sky looks blue because air molecules scatter short blue wavelengths of sunlight more than red ones.",
        "Rayleigh scattering: the atmosphere deflects the shorter, bluer part of the Sun's light far more strongly, so that colour reaches our eyes from every direction.",
        True,
        "both: Rayleigh scattering of blue light",
    ),
    (
        "A thermometer measures temperature.",
        "It tells you how hot or cold something is.",
        True,
        "temperature = how hot or cold",
    ),
    (
        "We have seasons because Earth's axis is tilted, so each hemisphere leans towards the Sun for part of the year.",
        "The planet's rotational axis is inclined about 23 degrees relative to its orbit, which changes how directly sunlight strikes each half over the year.",
        True,
        "axial tilt, in other words",
    ),
    (
        "Objects fall because gravity pulls them towards the Earth.",
        "Earth's mass attracts everything near it, so unsupported things accelerate downward.",
        True,
        "gravity, unnamed in one",
    ),
    (
        "Plants need light, water, carbon dioxide and nutrients from the soil to grow.",
        "To grow, a plant requires sunshine, moisture, CO2 from the air and minerals taken up by its roots.",
        True,
        "same four needs reworded",
    ),
    (
        "Ice floats because it is less dense than liquid water.",
        "Frozen water takes up more space for the same mass, so it is lighter per volume than the liquid and rises.",
        True,
        "lower density, explained",
    ),
    (
        "The tides are caused mainly by the Moon's gravitational pull on the oceans.",
        "Lunar gravity tugs the seas, raising bulges of water that travel around the planet as it spins.",
        True,
        "Moon's gravity",
    ),
    (
        "Sleep lets the brain and body rest, repair themselves and consolidate memories.",
        "During the night the body recovers and the mind files away what it learned during the day.",
        True,
        "rest, repair, memory",
    ),
    (
        "The heart pumps blood around the body.",
        "It is a muscle that circulates blood through the arteries and veins.",
        True,
        "pumps / circulates blood",
    ),
    (
        "Metal feels cold because it conducts heat away from your skin quickly.",
        "Metals are good thermal conductors, so they draw warmth out of your hand faster than wood does.",
        True,
        "thermal conduction",
    ),
    (
        "Photosynthesis is how plants turn light, water and carbon dioxide into sugar and oxygen.",
        "Green plants use the energy of sunlight to make glucose from CO2 and H2O, releasing O2.",
        True,
        "same process described",
    ),
    (
        "Leaves change colour in autumn because the green chlorophyll breaks down, revealing yellow and orange pigments.",
        "As days shorten, trees stop making the green pigment, and the carotenoids that were hidden underneath show through.",
        True,
        "chlorophyll loss reveals pigments",
    ),
    (
        "Thunder is the sound of air expanding rapidly when lightning heats it.",
        "A lightning bolt superheats the surrounding air, which bursts outward and makes a shock wave we hear as a rumble.",
        True,
        "lightning heats air, sound",
    ),
    (
        "The ocean is salty because rivers carry dissolved minerals from rocks into the sea, where they accumulate as water evaporates.",
        "Rain erodes rocks on land, streams bring the dissolved salts to the sea, and evaporation leaves them behind.",
        True,
        "weathering + evaporation",
    ),
    (
        "A compass shows which way is north.",
        "Its magnetised needle lines up with Earth's magnetic field and points to the magnetic north pole.",
        True,
        "points north",
    ),
    (
        "We sweat to cool down: evaporating sweat takes heat away from the skin.",
        "Perspiration regulates body temperature, because moisture leaving the skin as vapour carries heat with it.",
        True,
        "evaporative cooling",
    ),
    (
        "A vaccine trains the immune system to recognise a germ so the body can fight it off later.",
        "Vaccination prepares your defences against an infection before you ever meet it.",
        True,
        "immune preparation",
    ),
    (
        "Bread rises because yeast produces carbon dioxide gas that gets trapped in the dough.",
        "Yeast ferments the sugars in the dough and the bubbles of CO2 it releases puff it up.",
        True,
        "yeast CO2",
    ),
    (
        "Rain forms when water vapour in clouds condenses into droplets that grow heavy enough to fall.",
        "Moisture in the air cools and gathers into drops; once they are too heavy, they come down as precipitation.",
        True,
        "condensation, falling drops",
    ),
    (
        "We see the Moon at night because it reflects sunlight.",
        "The Moon has no light of its own; it shines by bouncing the Sun's light back to us.",
        True,
        "reflected sunlight",
    ),
    (
        "Bees make honey and beeswax.",
        "Honeybees produce honey from nectar, and wax to build their combs.",
        True,
        "honey and wax",
    ),
    (
        "We breathe to take in oxygen and get rid of carbon dioxide.",
        "Breathing supplies our cells with O2 and removes the CO2 they produce.",
        True,
        "gas exchange",
    ),
    (
        "The lungs move oxygen from the air into the blood and remove carbon dioxide.",
        "Their job is gas exchange: O2 enters the bloodstream and CO2 leaves it.",
        True,
        "gas exchange",
    ),
    (
        "A helium balloon floats because helium is lighter than the air around it.",
        "Helium is less dense than air, so the surrounding air pushes the balloon upward.",
        True,
        "buoyancy, lighter than air",
    ),
    (
        "An echo is a sound reflected back from a distant surface.",
        "When sound waves bounce off a wall or a cliff and return to you, you hear it again.",
        True,
        "reflected sound",
    ),
    (
        "Stars twinkle because turbulent air in our atmosphere bends their light.",
        "Moving layers of the atmosphere refract starlight unevenly, so the point of light seems to flicker.",
        True,
        "atmospheric refraction",
    ),
    (
        "The stomach breaks down food with acid and enzymes.",
        "It digests what we eat, churning it with gastric juices.",
        True,
        "digestion",
    ),
    (
        "Salt melts ice because it lowers the freezing point of water.",
        "Dissolved salt makes water freeze at a colder temperature, so ice on the road turns to brine.",
        True,
        "freezing point depression",
    ),
    (
        "The Sun is made mostly of hydrogen and helium.",
        "About three quarters of the Sun's mass is hydrogen and nearly all the rest is helium.",
        True,
        "hydrogen and helium",
    ),
    (
        "Cats purr mostly when they are content, but also to soothe themselves when stressed or hurt.",
        "Purring signals contentment, and cats also use it to calm themselves when in pain.",
        True,
        "contentment and self-soothing",
    ),
    (
        "Water boils at 100 degrees Celsius at sea level.",
        "At sea level water boils at 100 degrees Celsius.",
        True,
        "same statement reordered",
    ),
    (
        "Light from the Sun takes about 8 minutes to reach Earth.",
        "Sunlight needs roughly 8 minutes to travel to our planet.",
        True,
        "same figure",
    ),
    (
        "Antibiotics kill bacteria but do not work against viruses.",
        "They fight bacterial infections; viral ones are unaffected by them.",
        True,
        "same claim, negation in both",
    ),
    (
        "Diamonds are hard because each carbon atom is bonded strongly to four others in a rigid lattice.",
        "Their hardness comes from a stiff three-dimensional network of strong carbon-carbon bonds.",
        True,
        "covalent lattice",
    ),
    (
        "Iron rusts when it reacts with oxygen and water.",
        "Rust forms as iron is oxidised in the presence of moisture and air.",
        True,
        "oxidation with water",
    ),
    # hard negatives: contradictions sharing most words
    (
        "The sky is blue because air scatters blue light more than red light.",
        "The sky is blue because it reflects the blue colour of the ocean.",
        False,
        "scattering vs ocean reflection",
    ),
    ("Smoking causes lung cancer.", "Smoking does not cause lung cancer.", False, "negation"),
    (
        "Ice floats because it is less dense than liquid water.",
        "Ice floats because it is more dense than liquid water.",
        False,
        "less vs more dense",
    ),
    (
        "Water boils at 100 degrees Celsius at sea level.",
        "Water boils at 90 degrees Celsius at sea level.",
        False,
        "different number",
    ),
    (
        "Light from the Sun takes about 8 minutes to reach Earth.",
        "Light from the Sun takes about 8 hours to reach Earth.",
        False,
        "minutes vs hours",
    ),
    (
        "The tides are caused mainly by the Moon's gravity.",
        "The tides are caused mainly by the wind, not the Moon's gravity.",
        False,
        "negated cause",
    ),
    (
        "Metal feels cold because it conducts heat away from your skin.",
        "Metal feels cold because it is colder than the other objects in the room.",
        False,
        "conduction vs actual temperature",
    ),
    (
        "We have seasons because Earth's axis is tilted.",
        "We have seasons because Earth is closer to the Sun in summer.",
        False,
        "tilt vs distance",
    ),
    ("Antibiotics kill bacteria.", "Antibiotics kill viruses.", False, "bacteria vs viruses"),
    (
        "Bread rises because yeast produces carbon dioxide.",
        "Bread rises because yeast produces oxygen.",
        False,
        "CO2 vs oxygen",
    ),
    (
        "The heart pumps blood around the body.",
        "The heart does not pump blood; the lungs do.",
        False,
        "negation",
    ),
    (
        "A compass needle points to the magnetic north pole.",
        "A compass needle points to the geographic south pole.",
        False,
        "north vs south",
    ),
    ("Vaccines cause autism.", "Vaccines do not cause autism.", False, "negation"),
    (
        "Salt lowers the freezing point of water, so ice melts.",
        "Salt raises the freezing point of water, so ice melts.",
        False,
        "lowers vs raises",
    ),
    (
        "The Sun is made mostly of hydrogen and helium.",
        "The Sun is made mostly of iron and nickel.",
        False,
        "different composition",
    ),
    (
        "Stars twinkle because our atmosphere bends their light.",
        "Stars twinkle because they switch on and off.",
        False,
        "atmosphere vs stars themselves",
    ),
    (
        "There are 3 apples and 5 pears in the basket.",
        "There are 5 apples and 3 pears in the basket.",
        False,
        "swapped numbers",
    ),
    (
        "The Earth orbits the Sun once every 365 days.",
        "The Earth orbits the Sun once every 30 days.",
        False,
        "different number",
    ),
    (
        "Sound travels faster in water than in air.",
        "Sound travels slower in water than in air.",
        False,
        "faster vs slower",
    ),
    ("Plants need sunlight to grow.", "Plants never need sunlight to grow.", False, "negation"),
    ("We sweat to cool the body down.", "We sweat to warm the body up.", False, "cool vs warm"),
    (
        "An echo is sound reflected from a surface.",
        "An echo is sound absorbed by a surface.",
        False,
        "reflected vs absorbed",
    ),
    (
        "Helium balloons float because helium is lighter than air.",
        "Helium balloons float because helium is heavier than air.",
        False,
        "lighter vs heavier",
    ),
    (
        "The Moon shines because it reflects sunlight.",
        "The Moon shines because it makes its own light.",
        False,
        "reflects vs emits",
    ),
    ("Bees make honey.", "Bees don't make honey.", False, "negation"),
    (
        "Thunder is caused by lightning heating the air.",
        "Thunder is caused by clouds bumping into each other.",
        False,
        "different cause",
    ),
    (
        "Objects fall because gravity pulls them down.",
        "Objects fall because the air pushes them down.",
        False,
        "gravity vs air",
    ),
    (
        "The stomach digests food with acid.",
        "The stomach stores air and does not digest food.",
        False,
        "negation, different function",
    ),
    (
        "Rain forms when water vapour condenses in clouds.",
        "Rain forms when clouds evaporate completely.",
        False,
        "condense vs evaporate",
    ),
    (
        "Leaves turn yellow because chlorophyll breaks down in autumn.",
        "Leaves turn yellow because they absorb more water in autumn.",
        False,
        "different cause",
    ),
    (
        "It takes 2 hours to fly from Paris to London.",
        "It takes 12 hours to fly from Paris to London.",
        False,
        "2 vs 12",
    ),
)


def labelled_pairs(answers_path: str) -> list[dict[str, object]]:
    """Every pair of non-empty labelled answers to one question, as dataset records."""
    import itertools

    by_key: dict[tuple[str, str], str] = {}
    with open(answers_path, encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            by_key[(row["question"], row["model"])] = row["answer"]
    records: list[dict[str, object]] = []
    for question, claims in CLAIMS.items():
        present = [(m, c) for m, c in zip(LABELLED, claims, strict=True) if c != "-"]
        for (ma, ca), (mb, cb) in itertools.combinations(present, 2):
            same = ca == cb
            records.append(
                {
                    "a": by_key[(question, ma)],
                    "b": by_key[(question, mb)],
                    "same": same,
                    "reason": "same main claim (labelled by hand)"
                    if same
                    else "different main claims, or one states none (labelled by hand)",
                    "format": "free",
                    "source": f"bench/equivalence_long_generate.py seed {SEED}, "
                    f"question {question!r}, {ma} vs {mb}",
                }
            )
    for a, b, same, reason in HAND:
        records.append(
            {
                "a": a,
                "b": b,
                "same": same,
                "reason": reason,
                "format": "free",
                "source": "hand-written",
            }
        )
    return records


if __name__ == "__main__":
    if sys.argv[1] == "build":
        for record in labelled_pairs(sys.argv[2]):
            print(json.dumps(record, ensure_ascii=False))
    else:
        asyncio.run(ask_all(sys.argv[1]))
