"""Text material spoken in the mini corpora (see :mod:`data_prep.mini`).

* ``HARVARD``: Harvard sentences (IEEE 1969 recommended practice, public domain), for LibriLight,
  LibriSpeech and VoxCeleb.
* ``WELSH``: everyday Welsh sentences with circumflexes, diaeresis/acute/grave vowels, elisions
  (``i'r``, ``mae'n``), punctuation and quotes, as CommonVoice Welsh prompts look.
* ``SLURP_INTENTS``: real SLURP intent names, each with several command templates.
* ``EMOTION_PHRASES``: short neutral-content phrases, spoken with every emotion so that only the
  prosody tells emotions apart.

Example
-------
>>> len(WELSH) >= 40, sorted(SLURP_INTENTS)[0]
(True, 'alarm_query')
"""

HARVARD = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.",
    "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.",
    "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.",
    "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.",
    "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.",
    "The girl at the booth sold fifty bonds.",
    "The small pup gnawed a hole in the sock.",
    "The fish twisted and turned on the bent hook.",
    "Press the pants and sew a button on the vest.",
    "The swan dive was far short of perfect.",
]

WELSH = [
    "Mae'n braf heddiw yn Aberystwyth.",
    "Dw i'n hoffi darllen llyfrau Cymraeg.",
    "Ble mae'r orsaf drenau, os gwelwch yn dda?",
    "Roedd y plant yn chwarae ar y traeth drwy'r dydd.",
    "Mae gen i gath ddu a chi bach.",
    "Diolch yn fawr am eich help chi.",
    "Bydd hi'n bwrw glaw yfory yn y gogledd.",
    "Rydyn ni'n mynd i'r sinema heno.",
    "Mae'r tŷ ar ben y bryn.",
    'Dywedodd hi, "Croeso i Gymru!"',
    "Mae'r afon yn llifo'n gyflym ar ôl y storm.",
    "Pwy sy'n dod i'r cyfarfod ddydd Llun?",
    "Ces i frecwast mawr yn y caffi.",
    "Mae'r ŵyl yn dechrau ym mis Awst.",
    "Roedd y daith i'r mynydd yn hir ac yn anodd.",
    "Mae hi'n gweithio fel athrawes yn yr ysgol gynradd.",
    "Dydw i ddim yn deall y cwestiwn.",
    "Mae'r llyfrgell ar agor tan wyth o'r gloch.",
    "Gwelais i'r môr o'r ffenest.",
    "Mae'n ddrwg gen i, dw i'n hwyr.",
    "Beth ydy'ch enw chi?",
    "Mae Caerdydd yn brifddinas Cymru.",
    "Roedd y gân yn hyfryd iawn.",
    "Bydd y bws yn cyrraedd mewn deg munud.",
    "Mae'r ffermwr yn bwydo'r defaid bob bore.",
    "Dyma'r tro cyntaf i mi ymweld â'r castell.",
    "Ydych chi'n siarad Cymraeg?",
    "Mae'r haul yn tywynnu dros y dyffryn.",
    "Prynodd e fara a chaws yn y siop.",
    "Roedd y tywydd yn oer ac yn wyntog; arhoson ni yn y tŷ.",
    "Aethon ni am dro ar hyd yr arfordir.",
    "Mae'n bwysig dysgu'r iaith i'r genhedlaeth nesaf.",
    "Cafodd y gêm ei chwarae yn y stadiwm newydd.",
    "Mae'r ŷd yn tyfu yn y cae.",
    "Rhowch y llaeth yn yr oergell.",
    "Clywais i'r adar yn canu yn y coed.",
    "Bûm yn byw yng Nghaernarfon am flwyddyn.",
    "Mae'r gŵr yn gweithio yn y chwarel.",
    "Dŵr oer sydd orau ar ddiwrnod poeth.",
    "Mae'r lôn yn gul ac yn droellog.",
    "Rhaid i mi gopïo'r storïau cyn y cyfarfod.",
    "Dw i'n casáu'r glaw — mae'n wlyb!",
    "Roedd yr ystafell yn glòs ac yn dywyll.",
    "Mae 'Hen Wlad Fy Nhadau' yn anthem genedlaethol.",
    "Wyt ti wedi gweld y ffilm newydd?",
    "Oes caniatâd i ni ddefnyddio'r ffôn?",
]

# A long prompt (over 10 s when spoken) to exercise max-duration filtering.
WELSH_LONG = (
    "Ar ôl i'r glaw beidio, aeth y teulu i gyd i lawr i'r harbwr i weld y cychod yn dod i mewn, "
    "ac yna cerddon nhw'n araf yn ôl i fyny'r allt, heibio'r capel a'r hen ysgol, "
    "nes cyrraedd y tŷ lle'r oedd swper poeth yn aros amdanyn nhw."
)

SLURP_INTENTS = {
    "alarm_set": [
        "wake me up at {time} tomorrow",
        "set an alarm for {time}",
        "please set my alarm to {time}",
    ],
    "alarm_query": [
        "what alarms do i have",
        "is my alarm set for {time}",
        "show me my alarms for tomorrow",
    ],
    "weather_query": [
        "what is the weather like in {city}",
        "will it rain in {city} today",
        "how hot is it in {city}",
    ],
    "play_music": [
        "play some songs by {artist}",
        "put on music from {artist}",
        "i want to hear {artist}",
    ],
    "iot_hue_lightoff": [
        "turn off the lights in the {room}",
        "switch the {room} lights off",
        "lights off in the {room} please",
    ],
    "calendar_query": [
        "what meetings do i have on {day}",
        "am i free on {day}",
        "check my calendar for {day}",
    ],
    "email_sendemail": [
        "send an email to {person}",
        "write a mail to {person} saying i am late",
        "email {person} about the report",
    ],
}

SLURP_SLOTS = {
    "time": ["seven am", "six thirty", "eight o'clock", "noon"],
    "city": ["london", "paris", "cardiff", "boston"],
    "artist": ["the beatles", "adele", "queen", "mozart"],
    "room": ["kitchen", "bedroom", "hallway", "living room"],
    "day": ["monday", "friday", "the weekend", "tuesday"],
    "person": ["john", "my boss", "sarah", "the team"],
}

EMOTION_PHRASES = [
    "I don't know.",
    "Where were you?",
    "That is fine.",
    "Come over here.",
    "What did you say?",
    "Leave me alone.",
    "It was today.",
    "I see it now.",
    "We should go.",
    "Not again.",
]
