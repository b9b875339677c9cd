#!/usr/bin/env python3
"""Loopback fake of the X (Twitter) API for birdsentinel's test suite.

Every request is verified with oauthlib's *server side* (``RequestTokenEndpoint``,
``AccessTokenEndpoint``, ``ResourceEndpoint`` and a ``RequestValidator``
subclass): nothing unverified is ever accepted.  A wrong consumer secret, token
secret, revoked token or replayed nonce gets the 401 X sends::

    {"title":"Unauthorized","type":"about:blank","status":401,"detail":"Unauthorized"}

Use in tests::

    with FakeX(users={"alice": "1001"}) as fx:
        ... point the client at fx.base_url ...
        assert fx.wait_for(lambda: len(fx.dms) >= 1)

Standalone (for the benchmark)::

    python3 tests/fakex.py [--port N] [--creds-dir DIR] [--user NAME=ID ...]

prints ``READY http://127.0.0.1:PORT`` and then one JSON line per accepted
DM (``{"event":"dm","t":..,"to":..,"text":..}``) or post
(``{"event":"post","t":..,"id":..,"text":..}``) until SIGTERM/SIGINT.

Answers that test birdsentinel's defensive side: ``fx.inject(status=402,
body=NO_CREDITS_BODY)`` (an account without credits), ``fx.user_id_override``
(user lookups answer an id that breaks the rules), ``fx.dm_refusers`` (who
refuses DMs; also what ``user.fields=receives_your_dm`` reports), and
``fx.connections`` (TCP connections accepted, to prove a dry run made none).

Needs ``oauthlib`` and ``twitter-text-parser`` (module ``twitter_text``, the
post-length oracle); test dependencies only, birdsentinel itself is stdlib-only.
"""

import argparse
import hmac
import http.server
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import unicodedata
from http import HTTPStatus
from urllib.parse import parse_qsl, quote, unquote_plus, urlsplit

import twitter_text
from oauthlib.common import generate_token, urlencode
from oauthlib.oauth1 import (
    AccessTokenEndpoint,
    RequestTokenEndpoint,
    RequestValidator,
    ResourceEndpoint,
)

__all__ = ["FakeX", "write_creds", "weighted_length", "extract_urls", "oracle_length",
           "UNAUTHORIZED_BODY", "NO_CREDITS_BODY", "TOO_LONG_DETAIL", "DM_REFUSED_DETAIL"]

UNAUTHORIZED_BODY = {"title": "Unauthorized", "type": "about:blank", "status": 401, "detail": "Unauthorized"}
TOO_LONG_DETAIL = ("Your Tweet text is too long. For more information on how Twitter determines "
                   "text length see https://github.com/twitter/twitter-text.")
DUPLICATE_BODY = {"detail": "You are not allowed to create a Tweet with duplicate content.",
                  "type": "about:blank", "title": "Forbidden", "status": 403}
DM_REFUSED_DETAIL = "You cannot send messages to this user."
# What X answers (402) when the developer account has no credits left for pay-per-use.
NO_CREDITS_BODY = {"title": "Payment Required", "type": "about:blank", "status": 402,
                   "detail": "Your enrolled account [123] does not have any credits to fulfill this request."}
PROBLEMS = "https://api.x.com/2/problems/"
DM_MAX_CHARS = 10000
TWEET_MAX_WEIGHT = 280
HANDLE_RE = re.compile(r"^[A-Za-z0-9_]{1,15}$")
ID_RE = re.compile(r"^[0-9]{1,19}$")


def write_creds(directory, consumer_key, consumer_secret, access_token, access_token_secret, mode=0o600):
    """Write the four credential files (value + newline) with ``mode``; a new directory gets 0700."""
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700)
        os.chmod(directory, 0o700)
    for name, value in (("consumer-key", consumer_key), ("consumer-secret", consumer_secret),
                        ("access-token", access_token), ("access-token-secret", access_token_secret)):
        path = os.path.join(directory, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.write(fd, (value + "\n").encode("utf-8"))
        finally:
            os.close(fd)
        os.chmod(path, mode)  # umask or a pre-existing file must not change the mode asked for


# ---------------------------------------------------------------------------
# twitter-text v3 weighted length (independent of birdsentinel's implementation)
#
# config v3: scale 100, defaultWeight 200, transformedURLLength 23,
# emojiParsingEnabled, ranges [0,4351] [8192,8205] [8208,8223] [8242,8247] weigh 100.
# URL extraction follows twitter-text's extractUrlsWithIndices (protocol URLs
# and protocol-less ones, both need a known TLD; no IP addresses, no
# "localhost"; "name.ccTLD" without a path is not a URL except *.co / *.tv).
# ---------------------------------------------------------------------------

_GTLDS = """
삼성 닷컴 닷넷 香格里拉 餐厅 食品 飞利浦 電訊盈科 集团 通販 购物 谷歌 诺基亚 联通 网络 网站 网店 网址 组织机构 移动 珠宝 点看 游戏 淡马锡 机构
書籍 时尚 新闻 政府 政务 招聘 手表 手机 我爱你 慈善 微博 广东 工行 家電 娱乐 天主教 大拿 大众汽车 在线 嘉里大酒店 嘉里 商标 商店 商城 公益
公司 八卦 健康 信息 佛山 企业 中文网 中信 世界 ポイント ファッション セール ストア コム グーグル クラウド みんな คอม संगठन नेट कॉम
همراه موقع موبايلي كوم كاثوليك عرب شبكة بيتك بازار العليان ارامكو اتصالات ابوظبي קום сайт рус орг онлайн москва ком католик дети
zuerich zone zippo zip zero zara zappos yun youtube you yokohama yoga yodobashi yandex yamaxun yahoo yachts xyz xxx xperia xin
xihuan xfinity xerox xbox wtf wtc wow world works work woodside wolterskluwer wme winners wine windows win williamhill wiki
wien whoswho weir weibo wedding wed website weber webcam weatherchannel weather watches watch warman wanggou wang walter
walmart wales vuelos voyage voto voting vote volvo volkswagen vodka vlaanderen vivo viva vistaprint vista vision visa virgin
vip vin villas viking vig video viajes vet versicherung vermögensberatung vermögensberater verisign ventures vegas vanguard
vana vacations ups uol uno university unicom uconnect ubs ubank tvs tushu tunes tui tube trv trust travelersinsurance
travelers travelchannel travel training trading trade toys toyota town tours total toshiba toray top tools tokyo today tmall
tkmaxx tjx tjmaxx tirol tires tips tiffany tienda tickets tiaa theatre theater thd teva tennis temasek telefonica telecity tel
technology tech team tdk tci taxi tax tattoo tatar tatamotors target taobao talk taipei tab systems symantec sydney swiss
swiftcover swatch suzuki surgery surf support supply supplies sucks style study studio stream store storage stockholm
stcgroup stc statoil statefarm statebank starhub star staples stada srt srl spreadbetting spot sport spiegel space soy sony
song solutions solar sohu software softbank social soccer sncf smile smart sling skype sky skin ski site singles sina silk
shriram showtime show shouji shopping shop shoes shiksha shia shell shaw sharp shangrila sfr sexy sex sew seven ses services
sener select seek security secure seat search scot scor scjohnson science schwarz schule school scholarships schmidt
schaeffler scb sca sbs sbi saxo save sas sarl sapo sap sanofi sandvikcoromant sandvik samsung samsclub salon sale sakura
safety safe saarland ryukyu rwe run ruhr rugby rsvp room rogers rodeo rocks rocher rmit rip rio ril rightathome ricoh
richardli rich rexroth reviews review restaurant rest republican report repair rentals rent ren reliance reit reisen reise
rehab redumbrella redstone red recipes realty realtor realestate read raid radio racing qvc quest quebec qpon pwc pub
prudential pru protection property properties promo progressive prof productions prod pro prime press praxi pramerica post
porn politie poker pohl pnc plus plumbing playstation play place pizza pioneer pink ping pin pid pictures pictet pics piaget
physio photos photography photo phone philips phd pharmacy pfizer pet pccw pay passagens party parts partners pars paris
panerai panasonic pamperedchef page ovh ott otsuka osaka origins orientexpress organic org orange oracle open ooo onyourside
online onl ong one omega ollo oldnavy olayangroup olayan okinawa office off observer obi nyc ntt nrw nra nowtv nowruz now
norton northwesternmutual nokia nissay nissan ninja nikon nike nico nhk ngo nfl nexus nextdirect next news newholland new
neustar network netflix netbank net nec nba navy natura nationwide name nagoya nadex nab mutuelle mutual museum mtr mtpc mtn
msd movistar movie mov motorcycles moto moscow mortgage mormon mopar montblanc monster money monash mom moi moe moda mobily
mobile mobi mma mls mlb mitsubishi mit mint mini mil microsoft miami metlife merckmsd meo menu men memorial meme melbourne
meet media med mckinsey mcdonalds mcd mba mattel maserati marshalls marriott markets marketing market map mango management
man makeup maison maif madrid macys luxury luxe lupin lundbeck ltda ltd lplfinancial lpl love lotto lotte london lol loft
locus locker loans loan llp llc lixil living live lipsy link linde lincoln limo limited lilly like lighting lifestyle
lifeinsurance life lidl liaison lgbt lexus lego legal lefrak leclerc lease lds lawyer law latrobe latino lat lasalle lanxess
landrover land lancome lancia lancaster lamer lamborghini ladbrokes lacaixa kyoto kuokgroup kred krd kpn kpmg kosher
komatsu koeln kiwi kitchen kindle kinder kim kia kfh kerryproperties kerrylogistics kerryhotels kddi kaufen juniper juegos
jprs jpmorgan joy jot joburg jobs jnj jmp jll jlc jio jewelry jetzt jeep jcp jcb java jaguar iwc iveco itv itau istanbul ist
ismaili iselect irish ipiranga investments intuit international intel int insure insurance institute ink ing info infiniti
industries inc immobilien immo imdb imamat ikano iinet ifm ieee icu ice icbc ibm hyundai hyatt hughes htc hsbc how house
hotmail hotels hoteles hot hosting host hospital horse honeywell honda homesense homes homegoods homedepot holiday holdings
hockey hkt hiv hitachi hisamitsu hiphop hgtv hermes here helsinki help healthcare health hdfcbank hdfc hbo haus hangout
hamburg hair guru guitars guide guge gucci guardian group grocery gripe green gratis graphics grainger gov got gop google
goog goodyear goodhands goo golf goldpoint gold godaddy gmx gmo gmbh gmail globo global gle glass glade giving gives gifts
gift ggee george genting gent gea gdn gbiz gay garden gap games game gallup gallo gallery gal fyi futbol furniture fund fun
fujixerox fujitsu ftr frontier frontdoor frogans frl fresenius free fox foundation forum forsale forex ford football
foodnetwork food foo fly flsmidth flowers florist flir flights flickr fitness fit fishing fish firmdale firestone fire
financial finance final film fido fidelity fiat ferrero ferrari feedback fedex fast fashion farmers farm fans fan family
faith fairwinds fail fage extraspace express exposed expert exchange everbank events eus eurovision etisalat esurance estate
esq erni ericsson equipment epson epost enterprises engineering engineer energy emerck email education edu edeka eco eat
earth dvr dvag durban dupont duns dunlop duck dubai dtv drive download dot doosan domains doha dog dodge doctor docs dnp diy
dish discover discount directory direct digital diet diamonds dhl dev design desi dentist dental democrat delta deloitte
dell delivery degree deals dealer deal dds dclk day datsun dating date data dance dad dabur cyou cymru cuisinella csc
cruises cruise crs crown cricket creditunion creditcard credit cpa courses coupons coupon country corsica coop cool
cookingchannel cooking contractors contact consulting construction condos comsec computer compare company community
commbank comcast com cologne college coffee codes coach clubmed club cloud clothing clinique clinic click cleaning claims
cityeats city citic citi citadel cisco circle cipriani church chrysler chrome christmas chloe chintai cheap chat chase
charity channel chanel cfd cfa cern ceo center ceb cbs cbre cbn cba catholic catering cat casino cash caseih case casa
cartier cars careers career care cards caravan car capitalone capital capetown canon cancerresearch camp camera cam
calvinklein call cal cafe cab bzh buzz buy business builders build bugatti budapest brussels brother broker broadway
bridgestone bradesco box boutique bot boston bostik bosch boots booking book boo bond bom bofa boehringer boats bnpparibas
bnl bmw bms blue bloomberg blog blockbuster blanco blackfriday black biz bio bingo bing bike bid bible bharti bet bestbuy
best berlin bentley beer beauty beats bcn bcg bbva bbt bbc bayern bauhaus basketball baseball bargains barefoot barclays
barclaycard barcelona bar bank band bananarepublic banamex baidu baby azure axa aws avianca autos auto author auspost audio
audible audi auction attorney athleta associates asia asda arte art arpa army archi aramco arab aquarelle apple app
apartments aol anz anquan android analytics amsterdam amica amfam amex americanfamily americanexpress alstom alsace ally
allstate allfinanz alipay alibaba alfaromeo akdn airtel airforce airbus aigo aig agency agakhan africa afl afamilycompany
aetna aero aeg adult ads adac actor active aco accountants accountant accenture academy abudhabi abogado able abc abbvie
abbott abb abarth aarp aaa onion
""".split()

_CCTLDS = """
한국 香港 澳門 新加坡 台灣 台湾 中國 中国 გე ລາວ ไทย ලංකා ഭാരതം ಭಾರತ భారత్ சிங்கப்பூர் இலங்கை இந்தியா ଭାରତ ભારત ਭਾਰਤ ভাৰত ভারত
বাংলা भारोत भारतम् भारत ڀارت پاکستان موريتانيا مليسيا مصر قطر فلسطين عمان عراق سورية سودان تونس بھارت بارت ایران امارات
المغرب السعودية الجزائر البحرين الاردن հայ қаз укр срб рф мон мкд ею бел бг ευ ελ
zw zm za yt ye ws wf vu vn vi vg ve vc va uz uy us um uk ug ua tz tw tv tt tr tp to tn tm tl tk tj th tg tf td tc sz sy sx
sv su st ss sr so sn sm sl sk sj si sh sg se sd sc sb sa rw ru rs ro re qa py pw pt ps pr pn pm pl pk ph pg pf pe pa om nz
nu nr np no nl ni ng nf ne nc na mz my mx mw mv mu mt ms mr mq mp mo mn mm ml mk mh mg mf me md mc ma ly lv lu lt ls lr lk
li lc lb la kz ky kw kr kp kn km ki kh kg ke jp jo jm je it is ir iq io in im il ie id hu ht hr hn hm hk gy gw gu gt gs gr
gq gp gn gm gl gi gh gg gf ge gd gb ga fr fo fm fk fj fi eu et es er eh eg ee ec dz do dm dk dj de cz cy cx cw cv cu cr co
cn cm cl ck ci ch cg cf cd cc ca bz by bw bv bt bs br bq bo bn bm bl bj bi bh bg bf be bd bb ba az ax aw au at as ar aq ao
an am al ai ag af ae ad ac
""".split()


def _alt(words):
    """Alternation of ``words`` compiled as a character trie (sre tries alternatives one by
    one, so a flat 1,500-way alternation would dominate the matching time).  Longer words
    are preferred over their prefixes, like a longest-first flat alternation."""
    trie = {}
    for w in words:
        node = trie
        for ch in w.lower():
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node):
        branches = [re.escape(ch) + emit(sub) for ch, sub in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:%s)" % "|".join(branches)
        if "" in node:
            return "(?:%s)?" % body
        return body

    return emit(trie)


_TLD_END = r"(?=[^0-9a-zA-Z@+-]|$)"
_GTLD = "(?:(?:%s)%s)" % (_alt(_GTLDS), _TLD_END)
_CCTLD = "(?:(?:%s)%s)" % (_alt(_CCTLDS), _TLD_END)
_PUNYCODE = r"(?:xn--[\-0-9a-z]+)"
_INVALID_CHARS = "\ufffe\ufeff\uffff\u202a-\u202e"
_DIRECTIONAL = "\u202a-\u202e\u061c\u200e\u200f\u2066\u2067\u2068\u2069"
_SPACES = "\x09-\x0d\x20\x85\xa0\u1680\u180e\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# twitter-text's punct list (it repeats "'" and so leaves '"' out; kept as is).
_PUNCT = r"!'#%&'()*+,\\\-./:;<=>?@\[\]^_{|}~$"
_DOMAIN_CHAR = "[^%s%s%s]" % (_PUNCT, _SPACES, _INVALID_CHARS)
# Deviation from twitter-text, for speed only: a label is at most 63 characters and a
# domain at most 127 labels (twitter-text's regex is unbounded and rejects such domains
# afterwards, but unbounded repetition makes sre backtrack quadratically on long runs).
_SUBDOMAIN = r"(?:(?:{d}(?:[_-]|{d}){{0,61}})?{d}\.)".format(d=_DOMAIN_CHAR)
_DOMAIN_NAME = r"(?:(?:{d}(?:-|{d}){{0,61}})?{d}\.)".format(d=_DOMAIN_CHAR)
_DOMAIN = "(?:%s{0,126}%s(?:%s|%s|%s))" % (_SUBDOMAIN, _DOMAIN_NAME, _GTLD, _CCTLD, _PUNYCODE)
_LATIN = ("\xc0-\xd6\xd8-\xf6\xf8-\xff\u0100-\u024f\u0253\u0254\u0256\u0257\u0259\u025b\u0263"
          "\u0268\u026f\u0272\u0289\u028b\u02bb\u0300-\u036f\u1e00-\u1eff")
_CYRILLIC = "\u0400-\u04ff"
_PATH_CHAR = r"[a-z%s0-9!*';:=+,.$/%%#\[\]\-\u2013_~@|&%s]" % (_CYRILLIC, _LATIN)
_PARENS = r"\((?:{p}+|(?:{p}*\({p}+\){p}*))\)".format(p=_PATH_CHAR)
_PATH_END = r"(?:[+\-a-z%s0-9=_#/%s]|(?:%s))" % (_CYRILLIC, _LATIN, _PARENS)
_PATH = r"(?:(?:{p}*(?:{b}{p}*)*{e})|(?:@{p}+/))".format(p=_PATH_CHAR, b=_PARENS, e=_PATH_END)
_QUERY = r"[a-z0-9!?*'@();:&=+$/%#\[\]\-_.,~|]"
_QUERY_END = r"[a-z0-9\-_&=#/]"
_PRECEDING = "(?:[^A-Za-z0-9@\uff20$#\uff03%s]|[%s]|^)" % (_INVALID_CHARS, _DIRECTIONAL)
_EXTRACT_URL = re.compile(
    "((%s)((https?://)?(%s)(?::([0-9]+))?(/%s*)?(\\?%s*%s)?))"
    % (_PRECEDING, _DOMAIN, _PATH, _QUERY, _QUERY_END), re.IGNORECASE)
_ASCII_DOMAIN = re.compile(r"(?:(?:[\-a-z0-9%s]+)\.)+(?:%s|%s|%s)" % (_LATIN, _GTLD, _CCTLD, _PUNYCODE),
                           re.IGNORECASE)
_INVALID_SHORT_DOMAIN = re.compile("^%s%s$" % (_DOMAIN_NAME, _CCTLD), re.IGNORECASE)
_SPECIAL_SHORT_DOMAIN = re.compile("^%s(?:(?:co|tv)(?=[^0-9a-zA-Z@]|$))$" % _DOMAIN_NAME, re.IGNORECASE)
_INVALID_BEFORE_BARE = re.compile(r"[-_./]$")
_TCO = re.compile(r"^https?://t\.co/([a-z0-9]+)", re.IGNORECASE)
_MAX_URL_LENGTH = 4096
_TLD_CANDIDATE = re.compile(r"\.(?:%s|%s|%s)" % (_GTLD, _CCTLD, _PUNYCODE), re.IGNORECASE)


def _domain_ok(url, protocol, domain):
    """twitter-text's isValidUrl: every label punycodes to 1..63 chars, URL <= 4096."""
    if domain.lower().startswith("xn--") and not _ASCII_DOMAIN.search(domain):
        return False
    for label in domain.split("."):
        try:
            enc = label if label.isascii() else "xn--" + label.encode("punycode").decode("ascii")
        except UnicodeError:
            return False
        if not 1 <= len(enc) <= 63:
            return False
    return len(protocol) + len(url) <= _MAX_URL_LENGTH


def extract_urls(text):
    """Return [(start, end)] code-point spans of the URLs twitter-text would count as 23."""
    if "." not in text or not _TLD_CANDIDATE.search(text):
        return []  # every URL's domain ends in ".<known TLD>" (or ".xn--..."): cheap exit
    spans = []
    pos = 0
    while True:
        m = _EXTRACT_URL.search(text, pos)
        if not m:
            break
        pos = m.end() if m.end() > m.start() else m.start() + 1
        before, url, protocol, domain, path = m.group(2), m.group(3), m.group(4), m.group(5), m.group(7)
        start, end = m.start(3), m.end(3)
        if not _domain_ok(url, protocol or "https://", domain):
            continue
        if not protocol:
            if _INVALID_BEFORE_BARE.search(before):
                continue
            last = None
            for am in _ASCII_DOMAIN.finditer(domain):
                last = [start + am.start(), start + am.end()]
                if path or _SPECIAL_SHORT_DOMAIN.search(am.group(0)) or not _INVALID_SHORT_DOMAIN.search(am.group(0)):
                    spans.append(last)
            if last is None:
                continue
            if path:
                last[1] = end
        else:
            tco = _TCO.match(url)
            if tco:
                if len(tco.group(1)) > 40:
                    continue
                end = start + tco.end()
            spans.append([start, end])
    return [tuple(s) for s in spans]


_EMOJI_BASE = ("[\U0001f000-\U0001faff\u203c\u2049\u2139\u2194-\u2199\u21a9\u21aa\u231a\u231b\u2328"
               "\u23cf\u23e9-\u23f3\u23f8-\u23fa\u24c2\u25aa\u25ab\u25b6\u25c0\u25fb-\u25fe\u2600-\u27bf"
               "\u2934\u2935\u2b05-\u2b07\u2b1b\u2b1c\u2b50\u2b55\u3030\u303d\u3297\u3299]")
_EMOJI_MOD = "(?:\ufe0f|[\U0001f3fb-\U0001f3ff])"
_EMOJI_ELEMENT = "(?:%s%s?%s?|[\u00a9\u00ae\u2122]\ufe0f)" % (_EMOJI_BASE, _EMOJI_MOD, _EMOJI_MOD)
_EMOJI = re.compile(
    "(?:[\U0001f1e6-\U0001f1ff]{2}"                      # flag: regional-indicator pair
    "|[#*0-9]\ufe0f?\u20e3"                              # keycap
    "|%s(?:[\U000e0020-\U000e007e]+\U000e007f)?(?:\u200d%s)*"  # tags, ZWJ sequences
    "|\ufe0f)" % (_EMOJI_ELEMENT, _EMOJI_ELEMENT))


def _char_weight(cp):
    if cp <= 4351 or 8192 <= cp <= 8205 or 8208 <= cp <= 8223 or 8242 <= cp <= 8247:
        return 1
    return 2


def weighted_length(text):
    """twitter-text v3 weighted length of ``text`` (NFC; URL = 23; emoji sequence = 2)."""
    text = unicodedata.normalize("NFC", text)
    url_at = {s: e for s, e in extract_urls(text)}
    total = 0
    i = 0
    n = len(text)
    while i < n:
        if i in url_at:
            total += 23
            i = url_at[i]
            continue
        m = _EMOJI.match(text, i)
        if m and m.end() > i:
            total += 2
            i = m.end()
            continue
        total += _char_weight(ord(text[i]))
        i += 1
    return total


def oracle_length(text):
    """(weightedLength, valid) from twitter-text-parser, the independent port of twitter-text
    that POST /2/tweets checks against (next to weighted_length above)."""
    try:
        res = twitter_text.parse_tweet(text)
    except Exception:  # e.g. lone surrogates: not a text X would accept
        return None, False
    return res.weightedLength, bool(res.valid)


# ---------------------------------------------------------------------------
# OAuth 1.0a: oauthlib server side
# ---------------------------------------------------------------------------

def _ascii_token(value, max_len):
    return bool(value) and len(value) <= max_len and all(0x21 <= ord(c) <= 0x7e for c in value)


class _Validator(RequestValidator):
    """RequestValidator backed by a FakeX's in-memory state.

    Loosened on purpose: plain http on 127.0.0.1 (enforce_ssl False), and keys,
    tokens, nonces and verifiers of any printable-ASCII shape (oauthlib insists
    on 20-30 alphanumerics by default).  Everything that matters stays strict:
    known consumer, known (unrevoked) token paired with that consumer, HMAC
    signature, timestamp window, unique nonce per (consumer, timestamp, token).
    """

    enforce_ssl = False
    dummy_client = "dummy-client-key"
    dummy_request_token = "dummy-request-token"
    dummy_access_token = "dummy-access-token"

    def __init__(self, fx):
        super().__init__()
        self.fx = fx
        self.diag = threading.local()

    # -- shapes ----------------------------------------------------------
    @property
    def allowed_signature_methods(self):
        return ("HMAC-SHA1",)  # what X supports for OAuth 1.0a

    @property
    def timestamp_lifetime(self):
        return self.fx.timestamp_lifetime

    def check_client_key(self, client_key):
        return _ascii_token(client_key, 200)

    def check_request_token(self, request_token):
        return _ascii_token(request_token, 200)

    def check_access_token(self, request_token):
        return _ascii_token(request_token, 200)

    def check_nonce(self, nonce):
        return _ascii_token(nonce, 128)

    def check_verifier(self, verifier):
        return _ascii_token(verifier, 64)

    def check_realms(self, realms):
        return True

    # -- secrets (dummies keep the timing uniform, as oauthlib asks) -------
    def get_client_secret(self, client_key, request):
        with self.fx._lock:
            return self.fx._clients.get(client_key, "dummy-client-secret")

    def get_request_token_secret(self, client_key, token, request):
        with self.fx._lock:
            entry = self.fx._request_tokens.get(token)
        if entry and entry[0] == client_key:
            return entry[1]
        return "dummy-request-token-secret"

    def get_access_token_secret(self, client_key, token, request):
        with self.fx._lock:
            entry = self.fx._access_tokens.get(token)
        if entry and entry[0] == client_key:
            return entry[1]
        return "dummy-access-token-secret"

    # -- validation ------------------------------------------------------
    def validate_client_key(self, client_key, request):
        with self.fx._lock:
            return client_key in self.fx._clients

    def validate_request_token(self, client_key, token, request):
        with self.fx._lock:
            entry = self.fx._request_tokens.get(token)
        return bool(entry) and entry[0] == client_key

    def validate_access_token(self, client_key, token, request):
        with self.fx._lock:
            entry = self.fx._access_tokens.get(token)
        return bool(entry) and entry[0] == client_key

    def validate_timestamp_and_nonce(self, client_key, timestamp, nonce, request,
                                     request_token=None, access_token=None):
        # Only checked here: oauthlib calls this *before* verifying the signature, and a
        # forged request must not burn the nonce of a genuine one.  commit_nonce() records
        # it once the request is fully verified.
        key = (client_key, timestamp, nonce, request_token or access_token)
        self.diag.nonce_key = key
        with self.fx._lock:
            if key in self.fx._nonces:
                self.diag.replay = True
                return False
        return True

    def commit_nonce(self):
        """Record the verified request's nonce; False if a concurrent twin got there first."""
        key = getattr(self.diag, "nonce_key", None)
        if key is None:
            return False
        now = time.time()
        with self.fx._lock:
            seen = self.fx._nonces
            if key in seen:
                self.diag.replay = True
                return False
            seen[key] = now
            if len(seen) > 50000:  # forget what the timestamp window rejects anyway
                cutoff = now - 2 * self.fx.timestamp_lifetime
                for k in [k for k, t in seen.items() if t < cutoff]:
                    del seen[k]
        return True

    def validate_redirect_uri(self, client_key, redirect_uri, request):
        return redirect_uri == "oob" or redirect_uri.startswith(("http://", "https://"))

    def validate_requested_realms(self, client_key, realms, request):
        return True

    def validate_realms(self, client_key, token, request, uri=None, realms=None):
        return True

    def validate_verifier(self, client_key, token, verifier, request):
        ok = hmac.compare_digest(str(verifier).encode("utf-8"), str(self.fx.pin).encode("utf-8"))
        self.diag.verifier_ok = ok
        return ok

    def get_default_realms(self, client_key, request):
        return []

    def get_realms(self, token, request):
        return []

    # -- persistence -----------------------------------------------------
    def save_request_token(self, token, request):
        with self.fx._lock:
            self.fx._request_tokens[token["oauth_token"]] = (request.client_key, token["oauth_token_secret"])

    def invalidate_request_token(self, client_key, request_token, request):
        with self.fx._lock:
            self.fx._request_tokens.pop(request_token, None)  # PINs are single-use

    def save_access_token(self, token, request):
        with self.fx._lock:
            self.fx._access_tokens[token["oauth_token"]] = (request.client_key, token["oauth_token_secret"])
            self.fx.issued_tokens.append((token["oauth_token"], token["oauth_token_secret"]))

    def save_verifier(self, token, verifier, request):  # authorization endpoint not used
        pass


class _AccessTokenEndpoint(AccessTokenEndpoint):
    """X answers oauth_token, oauth_token_secret, user_id, screen_name (no oauth_authorized_realms)."""

    def __init__(self, validator, user_id):
        super().__init__(validator)
        self._user_id = user_id

    def create_access_token(self, request, credentials):
        token = {"oauth_token": "%s-%s" % (self._user_id, generate_token(40)),
                 "oauth_token_secret": generate_token(45)}
        token.update(credentials)
        self.request_validator.save_access_token(token, request)
        return urlencode(token.items())


def _move_oauth_params_into_header(path_qs, body, headers):
    """X takes oauth_callback / oauth_verifier in the query (or form body) next to an
    Authorization header; oauthlib refuses oauth_* params from two places.  Moving
    them into the header leaves the signature base string unchanged."""
    auth = headers.get("Authorization", "")
    if not auth[:6].lower() == "oauth ":
        return path_qs, body
    extra = []
    path, _, query = path_qs.partition("?")
    if query:
        keep = []
        for piece in query.split("&"):
            name = unquote_plus(piece.partition("=")[0])
            if name.startswith("oauth_"):
                extra.append((name, unquote_plus(piece.partition("=")[2])))
            else:
                keep.append(piece)
        path_qs = path + ("?" + "&".join(keep) if keep else "")
    ctype = headers.get("Content-Type", "")
    if body and "application/x-www-form-urlencoded" in ctype:
        keep = []
        for piece in body.split("&"):
            name = unquote_plus(piece.partition("=")[0])
            if name.startswith("oauth_"):
                extra.append((name, unquote_plus(piece.partition("=")[2])))
            else:
                keep.append(piece)
        body = "&".join(keep)
    if extra:
        headers["Authorization"] = auth.rstrip().rstrip(",") + "".join(
            ', %s="%s"' % (quote(k, safe="~"), quote(v, safe="~")) for k, v in extra)
    return path_qs, body


# ---------------------------------------------------------------------------
# HTTP server
# ---------------------------------------------------------------------------

def _problem(status, detail=None, title=None, ptype="about:blank", **extra):
    phrase = HTTPStatus(status).phrase
    body = {"title": title or phrase, "detail": detail or phrase, "type": ptype, "status": status}
    body.update(extra)
    return body


def _invalid_request(message, param, value):
    return {"errors": [{"parameters": {param: [value]}, "message": message}],
            "title": "Invalid Request", "detail": "One or more parameters to your request was invalid.",
            "type": PROBLEMS + "invalid-request"}


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fakex/1"
    timeout = 60

    def log_message(self, fmt, *args):  # keep pytest output clean
        pass

    def setup(self):
        super().setup()
        with self.server.fakex._lock:
            self.server.fakex._conns.add(self.connection)
            self.server.fakex.connections += 1

    def finish(self):
        try:
            super().finish()
        finally:
            with self.server.fakex._lock:
                self.server.fakex._conns.discard(self.connection)

    def do_GET(self):
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    # -- plumbing --------------------------------------------------------
    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, rec, status, body, headers=None, content_type="application/json"):
        if isinstance(body, (dict, list)):
            payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        elif isinstance(body, str):
            payload = body.encode("utf-8")
        else:
            payload = body or b""
        hdrs = {}
        if content_type:
            hdrs["content-type"] = content_type
        for k, v in (headers or {}).items():
            hdrs[str(k).lower()] = str(v)
        rec["status"] = status
        rec["response_headers"] = dict(hdrs)
        rec["response_body"] = payload
        self.send_response(status)
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.wfile.flush()

    def _drop(self, rec):
        rec["status"] = None
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- main entry ------------------------------------------------------
    def _dispatch(self):
        fx = self.server.fakex
        body = self._read_body()
        split = urlsplit(self.path)
        path = split.path
        rec = {
            "method": self.command, "path": path, "raw_path": self.path,
            "query": dict(parse_qsl(split.query, keep_blank_values=True)),
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body, "status": None, "t": fx.clock(), "signature_ok": False,
            "auth_error": None, "fault": None,
        }
        with fx._lock:
            fx.requests.append(rec)

        if path == "/oauth/authorize" and self.command == "GET":
            return self._authorize_page(rec)

        headers = {}
        for name in ("Authorization", "Content-Type"):
            if self.headers.get(name) is not None:
                headers[name] = self.headers.get(name)
        body_text = body.decode("utf-8", "replace")
        path_qs, body_text = _move_oauth_params_into_header(self.path, body_text, headers)
        host = self.headers.get("Host") or "127.0.0.1:%d" % fx.port
        uri = "http://%s%s" % (host, path_qs)

        if path in ("/oauth/request_token", "/oauth/access_token") and self.command in ("POST", "GET"):
            return self._token_endpoint(rec, path, uri, body_text, headers)

        ok, oreq = fx._verify_resource(uri, self.command, body_text, headers)
        if not ok:
            rec["auth_error"] = fx._reason(oreq, headers)
            return self._send(rec, 401, UNAUTHORIZED_BODY)
        rec["signature_ok"] = True
        token = oreq.resource_owner_key
        if self._apply_fault(rec, path):
            return
        status, payload, extra_headers = fx._route(self.command, path, rec, body, token)
        hdrs = fx._rate_headers(token, path, self.command)
        hdrs["x-access-level"] = fx.access_level
        hdrs.update(extra_headers)
        hdrs.update(fx.rate_headers)
        self._send(rec, status, payload, hdrs)

    def _apply_fault(self, rec, path):
        """Returns True if the fault fully handled (answered/dropped/hung) the request."""
        fx = self.server.fakex
        fault = fx._take_fault(path)
        if fault is None:
            return False
        rec["fault"] = dict(fault)
        if fault["hang"]:
            fx._stopping.wait()
            self._drop(rec)
            return True
        if fault["drop"]:
            self._drop(rec)
            return True
        if fault["delay"]:
            fx._stopping.wait(fault["delay"])
        if fault["status"] is not None:
            status = fault["status"]
            body = fault["body"] if fault["body"] is not None else _problem(status)
            headers = dict(fault["headers"] or {})
            ctype = None if any(k.lower() == "content-type" for k in headers) else "application/json"
            self._send(rec, status, body, headers, content_type=ctype)
            return True
        return False

    def _token_endpoint(self, rec, path, uri, body_text, headers):
        fx = self.server.fakex
        diag = fx._validator.diag
        diag.replay = False
        diag.verifier_ok = None
        diag.nonce_key = None
        try:
            if path == "/oauth/request_token":
                _h, out, status = fx._request_token_ep.create_request_token_response(
                    uri, self.command, body_text, headers)
            else:
                _h, out, status = fx._access_token_ep.create_access_token_response(
                    uri, self.command, body_text, headers,
                    credentials={"user_id": fx.me[0], "screen_name": fx.me[1]})
        except Exception as exc:  # malformed input must never turn into acceptance
            status, out = 400, "error=%s" % type(exc).__name__
        if status == 200 and not fx._validator.commit_nonce():
            status, out = 401, None
        if status != 200:
            if diag.replay:
                rec["auth_error"] = "replayed nonce"
            elif diag.verifier_ok is False:
                rec["auth_error"] = "wrong oauth_verifier (PIN)"
            else:
                rec["auth_error"] = "oauth: %s" % (out or "signature, consumer or token invalid")
            if path == "/oauth/access_token" and diag.verifier_ok is False:
                return self._send(rec, 401, "Error processing your OAuth request: Invalid oauth_verifier parameter",
                                  content_type="text/plain; charset=utf-8")
            return self._send(rec, 401, {"errors": [{"code": 32, "message": "Could not authenticate you."}]})
        rec["signature_ok"] = True
        if self._apply_fault(rec, path):
            return
        # X's quirk: form-encoded body labelled text/html.
        self._send(rec, 200, out, content_type="text/html; charset=utf-8")

    def _authorize_page(self, rec):
        """What a human would see on X after logging in and pressing Authorize."""
        fx = self.server.fakex
        token = rec["query"].get("oauth_token", "")
        with fx._lock:
            known = token in fx._request_tokens
        if not known:
            return self._send(rec, 403, "<html><body>This page is no longer valid.</body></html>",
                              content_type="text/html; charset=utf-8")
        rec["signature_ok"] = False
        page = ("<html><body><p>You've granted access to the app.</p>"
                "<div id=\"oauth_pin\"><p><kbd aria-labelledby=\"code-desc\"><code>%s</code></kbd></p></div>"
                "</body></html>" % fx.pin)
        return self._send(rec, 200, page, content_type="text/html; charset=utf-8")


class FakeX:
    """A fake X API on 127.0.0.1 that checks OAuth 1.0a like the real one.

    Attributes tests read: ``requests``, ``dms``, ``tweets`` (lists of dicts,
    append-only), ``issued_tokens`` (pairs minted by the PIN flow),
    ``connections`` (TCP connections accepted so far).
    Attributes tests may set: ``rate_headers``, ``dm_refusers`` (user ids or
    handles: their DMs get 403, and ``user.fields=receives_your_dm`` says
    false for them), ``users``, ``access_level``, ``pin``, ``rate_limits``,
    ``timestamp_lifetime``, ``on_event`` (callable(dict) for each accepted
    DM/post), ``user_id_override`` (any JSON value: every user object a
    lookup answers carries it as its "id", e.g. "string", as a broken or
    hostile server would).
    """

    def __init__(self, consumer_key="ck-test", consumer_secret="cs-test-SECRET", access_token="1-at-test",
                 access_token_secret="ats-test-SECRET", users=None, me=("999", "sentinel_bot"),
                 access_level="read-write-directmessages", pin="1234567", clock=time.time):
        self.consumer_key = consumer_key
        self.consumer_secret = consumer_secret
        self.access_token = access_token
        self.access_token_secret = access_token_secret
        self.users = dict(users or {})
        self.me = (str(me[0]), str(me[1]))
        self.access_level = access_level
        self.pin = pin
        self.clock = clock
        self.requests = []
        self.dms = []
        self.tweets = []
        self.issued_tokens = []
        self.rate_headers = {}
        self.dm_refusers = set()
        self.user_id_override = None
        self.connections = 0
        self.on_event = None
        self.timestamp_lifetime = 600  # seconds of allowed clock skew, checked against real time
        # Defaults for x-rate-limit-* (per token and endpoint, 15-minute windows).
        # Deliberately generous so "remaining" never reaches 0 in a test by accident.
        self.rate_limits = {"users_me": 75, "users_by": 900, "users_id": 900, "dm": 1440, "tweets": 10000,
                            "other": 900}
        self._lock = threading.RLock()
        self._clients = {consumer_key: consumer_secret}
        self._access_tokens = {access_token: (consumer_key, access_token_secret)}
        self._request_tokens = {}
        self._nonces = {}
        self._faults = []
        self._windows = {}
        self._sent_texts = set()
        self._next_event_id = 1582103724607971332
        self._next_tweet_id = 1850000000000000000
        self._conns = set()
        self._stopping = threading.Event()
        self._validator = _Validator(self)
        self._resource_ep = ResourceEndpoint(self._validator)
        self._request_token_ep = RequestTokenEndpoint(self._validator)
        self._access_token_ep = _AccessTokenEndpoint(self._validator, self.me[0])
        self._server = None
        self._thread = None
        self.port = None
        self.base_url = None

    # -- lifecycle -------------------------------------------------------
    def start(self):
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fakex = self
        self.port = self._server.server_address[1]
        self.base_url = "http://127.0.0.1:%d" % self.port
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fakex-%d" % self.port, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server is None:
            return
        self._stopping.set()  # releases hung and delayed handlers
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)
        self._server = None

    def __enter__(self):
        return self.start() if self._server is None else self

    def __exit__(self, *exc):
        self.stop()

    # -- test helpers ----------------------------------------------------
    def url(self, path):
        return self.base_url + path

    def write_creds(self, directory, mode=0o600):
        """write_creds() with this server's consumer and access credentials."""
        write_creds(directory, self.consumer_key, self.consumer_secret, self.access_token,
                    self.access_token_secret, mode=mode)

    def inject(self, status=None, headers=None, body=None, count=1, delay=0.0, drop=False, hang=False,
               path_prefix=None):
        """Queue a fault for the next ``count`` correctly signed requests whose path starts with
        ``path_prefix`` (all paths if None).  Faults are used first-queued first."""
        with self._lock:
            self._faults.append({"status": status, "headers": dict(headers or {}), "body": body,
                                 "count": int(count), "delay": float(delay), "drop": bool(drop),
                                 "hang": bool(hang), "path_prefix": path_prefix})

    def clear_faults(self):
        """Forget every fault still queued by inject()."""
        with self._lock:
            self._faults.clear()

    def revoke(self, access_token):
        with self._lock:
            self._access_tokens.pop(access_token, None)

    def wait_for(self, predicate, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                ok = predicate()
            if ok:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    # -- internals -------------------------------------------------------
    def _take_fault(self, path):
        with self._lock:
            for fault in self._faults:
                if fault["count"] > 0 and (fault["path_prefix"] is None or path.startswith(fault["path_prefix"])):
                    fault["count"] -= 1
                    if fault["count"] <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _verify_resource(self, uri, method, body_text, headers):
        diag = self._validator.diag
        diag.replay = False
        diag.nonce_key = None
        try:
            ok, oreq = self._resource_ep.validate_protected_resource_request(
                uri, http_method=method, body=body_text, headers=headers)
        except Exception:  # malformed input (bad query encoding, ...) is never accepted
            return False, None
        if ok and not self._validator.commit_nonce():
            ok = False
        return bool(ok), oreq

    def _reason(self, oreq, headers):
        if "Authorization" not in headers and oreq is None:
            return "no OAuth parameters"
        if oreq is None:
            return "malformed OAuth request"
        if getattr(self._validator.diag, "replay", False):
            return "replayed nonce"
        log = oreq.validator_log
        if log:
            bad = [k for k, v in log.items() if not v]
            names = {"client": "unknown consumer key", "resource_owner": "unknown or revoked token",
                     "signature": "bad signature", "realm": "realm"}
            return ", ".join(names.get(k, k) for k in bad) or "rejected"
        if not oreq.resource_owner_key:
            return "no oauth_token"
        try:
            if abs(time.time() - int(oreq.timestamp)) > self.timestamp_lifetime:
                return "timestamp outside the allowed window"
        except (TypeError, ValueError):
            return "bad oauth_timestamp"
        return "missing or malformed OAuth parameters"

    def _bucket(self, path):
        if path == "/2/users/me":
            return "users_me"
        if path.startswith("/2/users/by"):
            return "users_by"
        if path.startswith("/2/users/"):
            return "users_id"
        if path.startswith("/2/dm_conversations"):
            return "dm"
        if path == "/2/tweets":
            return "tweets"
        return "other"

    def _rate_headers(self, token, path, method):
        bucket = self._bucket(path)
        limit = self.rate_limits.get(bucket, 900)
        now = self.clock()
        with self._lock:
            start, used = self._windows.get((token, bucket), (now, 0))
            if now >= start + 900:
                start, used = now, 0
            used += 1
            self._windows[(token, bucket)] = (start, used)
        return {"x-rate-limit-limit": str(limit), "x-rate-limit-remaining": str(max(0, limit - used)),
                "x-rate-limit-reset": str(int(start + 900))}

    def _event(self, ev):
        cb = self.on_event
        if cb is not None:
            try:
                cb(ev)
            except Exception:
                pass

    def _lookup(self, name):
        if name.lower() == self.me[1].lower():
            return {"id": self.me[0], "name": self.me[1], "username": self.me[1]}
        with self._lock:
            for uname, uid in self.users.items():
                if uname.lower() == name.lower():
                    return {"id": str(uid), "name": uname, "username": uname}
        return None

    def _lookup_id(self, uid):
        if uid == self.me[0]:
            return {"id": self.me[0], "name": self.me[1], "username": self.me[1]}
        with self._lock:
            for uname, u in self.users.items():
                if str(u) == uid:
                    return {"id": uid, "name": uname, "username": uname}
        return None

    def _refuses(self, uid):
        """Whether the user with this id refuses our DMs (dm_refusers holds ids or handles)."""
        with self._lock:
            refusers = {str(x).lower().lstrip("@") for x in self.dm_refusers}
            names = [n for n, u in self.users.items() if str(u) == uid]
        if uid == self.me[0]:
            names.append(self.me[1])
        return uid.lower() in refusers or any(n.lower() in refusers for n in names)

    def _user_out(self, user, rec):
        """A user object as answered: user.fields=receives_your_dm adds that field, and
        user_id_override replaces the id."""
        out = dict(user)
        fields = rec["query"].get("user.fields", "").split(",")
        if "receives_your_dm" in fields:
            out["receives_your_dm"] = not self._refuses(user["id"])
        if self.user_id_override is not None:
            out["id"] = self.user_id_override
        return out

    @staticmethod
    def _json_body(raw, headers):
        """Parse an X v2 JSON body; returns (obj, error_payload)."""
        ctype = headers.get("content-type", "")
        if "application/json" not in ctype.lower():
            return None, _problem(400, "Content-Type must be application/json (got %r)." % ctype,
                                  title="Invalid Request", ptype=PROBLEMS + "invalid-request")
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            return None, _problem(400, "Request body is not valid JSON: %s" % exc,
                                  title="Invalid Request", ptype=PROBLEMS + "invalid-request")
        if not isinstance(obj, dict):
            return None, _problem(400, "Request body must be a JSON object.",
                                  title="Invalid Request", ptype=PROBLEMS + "invalid-request")
        return obj, None

    def _route(self, method, path, rec, raw, token):
        """Application logic after a verified signature. Returns (status, payload, headers)."""
        parts = path.strip("/").split("/")
        writes = "write" in self.access_level
        perm_body = _problem(403, "Your client app is not configured with the appropriate oauth1 app "
                                  "permissions for this endpoint.", ptype=PROBLEMS + "oauth1-permissions")

        if path == "/2/users/me":
            if method != "GET":
                return 405, _problem(405), {}
            return 200, {"data": self._user_out(self._lookup_id(self.me[0]), rec)}, {}

        if parts[:4] == ["2", "users", "by", "username"] and len(parts) == 5:
            if method != "GET":
                return 405, _problem(405), {}
            name = parts[4]
            if not HANDLE_RE.match(name):
                return 400, _invalid_request(
                    "The `username` query parameter value [%s] does not match ^[A-Za-z0-9_]{1,15}$" % name,
                    "username", name), {}
            user = self._lookup(name)
            if user:
                return 200, {"data": self._user_out(user, rec)}, {}
            return 200, {"errors": [self._not_found(name)]}, {}

        if parts == ["2", "users", "by"]:
            if method != "GET":
                return 405, _problem(405), {}
            names = [n for n in rec["query"].get("usernames", "").split(",") if n]
            if not names or len(names) > 100 or not all(HANDLE_RE.match(n) for n in names):
                return 400, _invalid_request("The `usernames` query parameter value is invalid.",
                                             "usernames", rec["query"].get("usernames", "")), {}
            data, errors = [], []
            for n in names:
                user = self._lookup(n)
                if user:
                    data.append(self._user_out(user, rec))
                else:
                    errors.append(self._not_found(n))
            out = {}
            if data:
                out["data"] = data
            if errors:
                out["errors"] = errors
            return 200, out, {}

        if parts[:2] == ["2", "users"] and len(parts) == 3:    # GET /2/users/:id
            if method != "GET":
                return 405, _problem(405), {}
            uid = parts[2]
            if not ID_RE.match(uid):
                return 400, _invalid_request("The `id` query parameter value [%s] does not match ^[0-9]{1,19}$"
                                             % uid, "id", uid), {}
            user = self._lookup_id(uid)
            if user:
                return 200, {"data": self._user_out(user, rec)}, {}
            return 200, {"errors": [self._not_found(uid, "id")]}, {}

        if parts[:2] == ["2", "dm_conversations"] and len(parts) in (4, 5) and parts[-1] == "messages":
            if method != "POST":
                return 405, _problem(405), {}
            if len(parts) == 5 and parts[2] == "with":
                to = parts[3]
                if not ID_RE.match(to):
                    return 400, _invalid_request("The `participant_id` path parameter value [%s] does not "
                                                 "match ^[0-9]{1,19}$" % to, "participant_id", to), {}
            elif len(parts) == 4:
                ids = parts[2].split("-")
                if len(ids) != 2 or not all(ID_RE.match(i) for i in ids) or self.me[0] not in ids:
                    return 404 if len(ids) == 2 else 400, _problem(
                        404 if len(ids) == 2 else 400, "Could not find dm conversation: [%s]." % parts[2]), {}
                to = ids[1] if ids[0] == self.me[0] else ids[0]
            else:
                return 404, _problem(404), {}
            if "directmessages" not in self.access_level:
                return 403, perm_body, {}
            obj, err = self._json_body(raw, rec["headers"])
            if err:
                return 400, err, {}
            unknown = sorted(set(obj) - {"text", "attachments"})
            if unknown:
                return 400, _invalid_request("[%s] is not one of [text,attachments]" % unknown[0],
                                             unknown[0], str(obj[unknown[0]])), {}
            text = obj.get("text")
            if not isinstance(text, str) or len(text) == 0:
                return 400, _invalid_request("$.text: must be a non-empty string", "text", repr(text)), {}
            if len(text) > DM_MAX_CHARS:
                return 400, _invalid_request("$.text: length must be at most %d characters" % DM_MAX_CHARS,
                                             "text", "%d characters" % len(text)), {}
            if self._refuses(to):
                return 403, _problem(403, DM_REFUSED_DETAIL), {}
            with self._lock:
                event_id = str(self._next_event_id)
                self._next_event_id += 1
                ev = {"to": to, "text": text, "t": self.clock()}
                self.dms.append(ev)
            lo, hi = sorted((self.me[0], to), key=int)
            self._event({"event": "dm", "t": ev["t"], "to": to, "text": text})
            return 201, {"data": {"dm_conversation_id": "%s-%s" % (lo, hi), "dm_event_id": event_id}}, {}

        if path == "/2/tweets":
            if method != "POST":
                return 405, _problem(405), {}
            if not writes:
                return 403, perm_body, {}
            obj, err = self._json_body(raw, rec["headers"])
            if err:
                return 400, err, {}
            text = obj.get("text", "")
            if not isinstance(text, str) or not text:
                return 400, _invalid_request("$.text: must be a non-empty string", "text", repr(text)), {}
            weight, valid = oracle_length(text)
            rec["weights"] = {"twitter_text": weight, "fakex": weighted_length(text)}
            if not valid or weight > TWEET_MAX_WEIGHT or rec["weights"]["fakex"] > TWEET_MAX_WEIGHT:
                return 400, _problem(400, TOO_LONG_DETAIL), {}
            key = unicodedata.normalize("NFC", text)
            with self._lock:
                if key in self._sent_texts:
                    return 403, dict(DUPLICATE_BODY), {}
                self._sent_texts.add(key)
                tid = str(self._next_tweet_id)
                self._next_tweet_id += 1
                ev = {"id": tid, "text": text, "t": self.clock()}
                self.tweets.append(ev)
            self._event({"event": "post", "t": ev["t"], "id": tid, "text": text})
            return 201, {"data": {"id": tid, "text": text, "edit_history_tweet_ids": [tid]}}, {}

        return 404, _problem(404), {}

    @staticmethod
    def _not_found(value, parameter="username"):
        return {"value": value, "detail": "Could not find user with %s: [%s]." % (parameter, value),
                "title": "Not Found Error", "resource_type": "user", "parameter": parameter,
                "resource_id": value, "type": PROBLEMS + "resource-not-found"}


# ---------------------------------------------------------------------------
# standalone
# ---------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description="Loopback fake X API (OAuth 1.0a verified by oauthlib).")
    ap.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: ephemeral)")
    ap.add_argument("--creds-dir", help="write consumer-key, consumer-secret, access-token, access-token-secret here")
    ap.add_argument("--user", action="append", default=[], metavar="NAME=ID", help="known @handle (repeatable)")
    args = ap.parse_args(argv)

    users = {}
    for item in args.user:
        name, _, uid = item.partition("=")
        users[name] = uid
    fx = FakeX(users=users)
    out_lock = threading.Lock()

    def emit(ev):
        with out_lock:
            sys.stdout.write(json.dumps(ev, ensure_ascii=False) + "\n")
            sys.stdout.flush()

    fx.on_event = emit
    if args.port:
        # Fixed port: bind it ourselves, then serve exactly like start().
        fx._server = _Server(("127.0.0.1", args.port), _Handler)
        fx._server.fakex = fx
        fx.port = fx._server.server_address[1]
        fx.base_url = "http://127.0.0.1:%d" % fx.port
        fx._thread = threading.Thread(target=fx._server.serve_forever, kwargs={"poll_interval": 0.05},
                                      daemon=True)
        fx._thread.start()
    else:
        fx.start()
    if args.creds_dir:
        fx.write_creds(args.creds_dir)

    done = threading.Event()

    def on_signal(signum, frame):
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with out_lock:
        sys.stdout.write("READY %s\n" % fx.base_url)
        sys.stdout.flush()
    while not done.wait(0.2):
        pass
    fx.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
