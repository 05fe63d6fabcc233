"""The symbols the simulated market trades: real US listings with plausible parameters.

`base_price` is roughly the real close of the first session of 2025 (the simulated
market's price anchor); from there the simulated path wanders on its own.
`annual_volatility` and `average_daily_volume` (shares) are in the right range for
each name so that a mega-cap ETF moves and trades differently from a meme stock.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from domain.market.models import SecurityInfo

NASDAQ = "NASDAQ"
NYSE = "NYSE"
NYSE_ARCA = "NYSE Arca"

TECHNOLOGY = "Technology"
COMMUNICATION = "Communication Services"
CONSUMER_DISCRETIONARY = "Consumer Discretionary"
CONSUMER_STAPLES = "Consumer Staples"
FINANCIALS = "Financials"
HEALTH_CARE = "Health Care"
ENERGY = "Energy"
INDUSTRIALS = "Industrials"
UTILITIES = "Utilities"
MATERIALS = "Materials"
REAL_ESTATE = "Real Estate"
ETF = "ETF"


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    symbol: str
    name: str
    exchange: str
    sector: str
    description: str
    base_price: Decimal
    annual_volatility: float
    average_daily_volume: int

    @property
    def info(self) -> SecurityInfo:
        return SecurityInfo(
            symbol=self.symbol,
            name=self.name,
            exchange=self.exchange,
            sector=self.sector,
            description=self.description,
        )


def _spec(
    symbol: str,
    name: str,
    exchange: str,
    sector: str,
    description: str,
    price: str,
    volatility: float,
    volume_millions: float,
) -> SymbolSpec:
    return SymbolSpec(
        symbol=symbol,
        name=name,
        exchange=exchange,
        sector=sector,
        description=description,
        base_price=Decimal(price),
        annual_volatility=volatility,
        average_daily_volume=int(volume_millions * 1_000_000),
    )


# fmt: off
UNIVERSE: tuple[SymbolSpec, ...] = (
    # Technology
    _spec("AAPL", "Apple Inc.", NASDAQ, TECHNOLOGY,
          "Designs iPhone, Mac, iPad and wearables and runs the App Store and iCloud services.",
          "243.85", 0.25, 50),
    _spec("MSFT", "Microsoft Corporation", NASDAQ, TECHNOLOGY,
          "Makes Windows, Office and the Azure cloud platform.",
          "418.58", 0.22, 20),
    _spec("NVDA", "NVIDIA Corporation", NASDAQ, TECHNOLOGY,
          "Designs GPUs and accelerated-computing platforms for AI data centers and gaming.",
          "138.31", 0.50, 230),
    _spec("AVGO", "Broadcom Inc.", NASDAQ, TECHNOLOGY,
          "Supplies networking and custom AI semiconductors and infrastructure software.",
          "232.52", 0.45, 25),
    _spec("AMD", "Advanced Micro Devices, Inc.", NASDAQ, TECHNOLOGY,
          "Designs CPUs, GPUs and adaptive chips for PCs, data centers and consoles.",
          "120.63", 0.48, 40),
    _spec("INTC", "Intel Corporation", NASDAQ, TECHNOLOGY,
          "Designs and manufactures x86 processors and runs a contract foundry business.",
          "20.22", 0.45, 60),
    _spec("CSCO", "Cisco Systems, Inc.", NASDAQ, TECHNOLOGY,
          "Sells networking hardware, security and collaboration software.",
          "59.24", 0.20, 18),
    _spec("QCOM", "QUALCOMM Incorporated", NASDAQ, TECHNOLOGY,
          "Licenses wireless patents and sells Snapdragon mobile and automotive chips.",
          "156.16", 0.35, 8),
    _spec("TXN", "Texas Instruments Incorporated", NASDAQ, TECHNOLOGY,
          "Makes analog and embedded processing chips for industrial and auto markets.",
          "188.12", 0.27, 6),
    _spec("ADBE", "Adobe Inc.", NASDAQ, TECHNOLOGY,
          "Sells Creative Cloud, Document Cloud and digital-experience software.",
          "440.29", 0.32, 3.5),
    _spec("ORCL", "Oracle Corporation", NYSE, TECHNOLOGY,
          "Provides database software, enterprise applications and cloud infrastructure.",
          "163.83", 0.35, 10),
    _spec("CRM", "Salesforce, Inc.", NYSE, TECHNOLOGY,
          "Provides cloud CRM software for sales, service and marketing teams.",
          "331.32", 0.33, 6),
    _spec("IBM", "International Business Machines Corporation", NYSE, TECHNOLOGY,
          "Sells hybrid-cloud software, consulting and mainframe systems.",
          "223.94", 0.24, 4),
    _spec("NOW", "ServiceNow, Inc.", NYSE, TECHNOLOGY,
          "Provides a cloud workflow platform for IT, HR and customer service.",
          "1059.81", 0.35, 1.2),
    _spec("PLTR", "Palantir Technologies Inc.", NASDAQ, TECHNOLOGY,
          "Builds data-integration and AI platforms for governments and enterprises.",
          "75.84", 0.65, 80),
    # Communication services
    _spec("GOOGL", "Alphabet Inc. Class A", NASDAQ, COMMUNICATION,
          "Parent of Google Search, YouTube, Android and Google Cloud.",
          "190.63", 0.30, 25),
    _spec("META", "Meta Platforms, Inc.", NASDAQ, COMMUNICATION,
          "Runs Facebook, Instagram, WhatsApp and the Reality Labs hardware unit.",
          "599.24", 0.35, 13),
    _spec("NFLX", "Netflix, Inc.", NASDAQ, COMMUNICATION,
          "Runs a global subscription streaming service for series, films and games.",
          "886.81", 0.35, 3.5),
    _spec("CMCSA", "Comcast Corporation", NASDAQ, COMMUNICATION,
          "Operates Xfinity broadband and cable, NBCUniversal and Sky.",
          "38.06", 0.25, 20),
    _spec("DIS", "The Walt Disney Company", NYSE, COMMUNICATION,
          "Runs theme parks, film studios, ESPN and the Disney+ streaming service.",
          "111.35", 0.28, 9),
    _spec("T", "AT&T Inc.", NYSE, COMMUNICATION,
          "Provides wireless, fiber broadband and business connectivity in the US.",
          "22.85", 0.20, 35),
    _spec("VZ", "Verizon Communications Inc.", NYSE, COMMUNICATION,
          "Provides wireless and Fios broadband services across the US.",
          "40.13", 0.18, 20),
    # Consumer discretionary
    _spec("AMZN", "Amazon.com, Inc.", NASDAQ, CONSUMER_DISCRETIONARY,
          "Runs the largest US online store, Prime, and the AWS cloud platform.",
          "220.22", 0.32, 40),
    _spec("TSLA", "Tesla, Inc.", NASDAQ, CONSUMER_DISCRETIONARY,
          "Makes electric vehicles, battery storage systems and self-driving software.",
          "379.28", 0.60, 90),
    _spec("HD", "The Home Depot, Inc.", NYSE, CONSUMER_DISCRETIONARY,
          "Operates the largest US home-improvement retail chain.",
          "388.60", 0.22, 3.5),
    _spec("LOW", "Lowe's Companies, Inc.", NYSE, CONSUMER_DISCRETIONARY,
          "Operates home-improvement stores across the US.",
          "245.30", 0.24, 2.5),
    _spec("MCD", "McDonald's Corporation", NYSE, CONSUMER_DISCRETIONARY,
          "Franchises and operates McDonald's restaurants worldwide.",
          "288.31", 0.18, 3.5),
    _spec("NKE", "NIKE, Inc.", NYSE, CONSUMER_DISCRETIONARY,
          "Designs and sells athletic footwear, apparel and equipment.",
          "75.03", 0.30, 12),
    _spec("SBUX", "Starbucks Corporation", NASDAQ, CONSUMER_DISCRETIONARY,
          "Roasts coffee and operates Starbucks coffeehouses worldwide.",
          "91.22", 0.28, 9),
    # Consumer staples
    _spec("WMT", "Walmart Inc.", NASDAQ, CONSUMER_STAPLES,
          "Operates Walmart supercenters, Sam's Club and a growing e-commerce business.",
          "90.49", 0.20, 15),
    _spec("COST", "Costco Wholesale Corporation", NASDAQ, CONSUMER_STAPLES,
          "Operates membership warehouse clubs selling groceries and general goods.",
          "914.20", 0.22, 2),
    _spec("PG", "The Procter & Gamble Company", NYSE, CONSUMER_STAPLES,
          "Makes household brands such as Tide, Pampers, Gillette and Crest.",
          "165.68", 0.16, 7),
    _spec("KO", "The Coca-Cola Company", NYSE, CONSUMER_STAPLES,
          "Makes and licenses Coca-Cola and hundreds of other beverage brands.",
          "62.12", 0.15, 14),
    _spec("PEP", "PepsiCo, Inc.", NASDAQ, CONSUMER_STAPLES,
          "Makes Pepsi beverages and Frito-Lay and Quaker snacks.",
          "151.25", 0.17, 6),
    # Financials
    _spec("JPM", "JPMorgan Chase & Co.", NYSE, FINANCIALS,
          "The largest US bank: consumer banking, investment banking and asset management.",
          "239.61", 0.22, 9),
    _spec("BAC", "Bank of America Corporation", NYSE, FINANCIALS,
          "Provides consumer and commercial banking, wealth management and markets services.",
          "44.36", 0.25, 35),
    _spec("WFC", "Wells Fargo & Company", NYSE, FINANCIALS,
          "Provides consumer, commercial and corporate banking across the US.",
          "70.96", 0.27, 15),
    _spec("GS", "The Goldman Sachs Group, Inc.", NYSE, FINANCIALS,
          "Runs investment banking, trading and asset and wealth management.",
          "577.98", 0.27, 2),
    _spec("MS", "Morgan Stanley", NYSE, FINANCIALS,
          "Runs wealth management, investment banking and institutional securities.",
          "126.20", 0.27, 6),
    _spec("V", "Visa Inc.", NYSE, FINANCIALS,
          "Operates the world's largest card-payments network.",
          "316.24", 0.18, 7),
    _spec("MA", "Mastercard Incorporated", NYSE, FINANCIALS,
          "Operates a global card-payments network and related data services.",
          "527.53", 0.19, 3),
    _spec("AXP", "American Express Company", NYSE, FINANCIALS,
          "Issues charge and credit cards and runs its own payments network.",
          "299.79", 0.25, 3),
    _spec("BRK.B", "Berkshire Hathaway Inc. Class B", NYSE, FINANCIALS,
          "Holding company owning GEICO, BNSF Railway and a large equity portfolio.",
          "453.20", 0.15, 4),
    _spec("COIN", "Coinbase Global, Inc.", NASDAQ, FINANCIALS,
          "Operates a US cryptocurrency exchange and custody platform.",
          "260.01", 0.70, 10),
    # Health care
    _spec("LLY", "Eli Lilly and Company", NYSE, HEALTH_CARE,
          "Develops medicines for diabetes, obesity, oncology and immunology.",
          "771.96", 0.35, 3.5),
    _spec("UNH", "UnitedHealth Group Incorporated", NYSE, HEALTH_CARE,
          "Runs the largest US health insurer and the Optum health-services business.",
          "513.72", 0.30, 4),
    _spec("JNJ", "Johnson & Johnson", NYSE, HEALTH_CARE,
          "Develops pharmaceuticals and medical devices.",
          "144.62", 0.15, 7),
    _spec("PFE", "Pfizer Inc.", NYSE, HEALTH_CARE,
          "Develops and sells vaccines and prescription medicines.",
          "26.73", 0.22, 40),
    _spec("MRK", "Merck & Co., Inc.", NYSE, HEALTH_CARE,
          "Develops prescription medicines such as Keytruda, vaccines and animal health.",
          "99.44", 0.22, 10),
    _spec("ABBV", "AbbVie Inc.", NYSE, HEALTH_CARE,
          "Develops immunology, oncology and neuroscience drugs and Botox aesthetics.",
          "178.88", 0.25, 6),
    _spec("TMO", "Thermo Fisher Scientific Inc.", NYSE, HEALTH_CARE,
          "Supplies laboratory instruments, reagents and clinical research services.",
          "521.01", 0.24, 1.8),
    # Energy
    _spec("XOM", "Exxon Mobil Corporation", NYSE, ENERGY,
          "Explores for, produces and refines oil and natural gas worldwide.",
          "108.09", 0.22, 15),
    _spec("CVX", "Chevron Corporation", NYSE, ENERGY,
          "Produces and refines oil and natural gas.",
          "145.74", 0.22, 8),
    _spec("COP", "ConocoPhillips", NYSE, ENERGY,
          "Explores for and produces crude oil and natural gas.",
          "99.98", 0.27, 7),
    # Industrials
    _spec("CAT", "Caterpillar Inc.", NYSE, INDUSTRIALS,
          "Makes construction and mining equipment, engines and turbines.",
          "363.63", 0.28, 3),
    _spec("BA", "The Boeing Company", NYSE, INDUSTRIALS,
          "Makes commercial jetliners, defense systems and space equipment.",
          "176.55", 0.35, 8),
    _spec("GE", "GE Aerospace", NYSE, INDUSTRIALS,
          "Makes jet engines and propulsion systems for commercial and military aircraft.",
          "168.50", 0.30, 5),
    _spec("HON", "Honeywell International Inc.", NASDAQ, INDUSTRIALS,
          "Makes aerospace systems, building automation and industrial software.",
          "226.75", 0.20, 3.5),
    _spec("RTX", "RTX Corporation", NYSE, INDUSTRIALS,
          "Makes Pratt & Whitney engines, Collins avionics and Raytheon defense systems.",
          "116.28", 0.22, 5),
    _spec("UPS", "United Parcel Service, Inc.", NYSE, INDUSTRIALS,
          "Delivers packages and runs freight and logistics services worldwide.",
          "126.30", 0.27, 5),
    _spec("DE", "Deere & Company", NYSE, INDUSTRIALS,
          "Makes John Deere agricultural, construction and forestry machinery.",
          "424.73", 0.25, 1.5),
    # Utilities, materials, real estate
    _spec("NEE", "NextEra Energy, Inc.", NYSE, UTILITIES,
          "Runs Florida Power & Light and the largest US wind and solar generator.",
          "71.74", 0.22, 10),
    _spec("DUK", "Duke Energy Corporation", NYSE, UTILITIES,
          "Regulated electric and gas utility serving the Carolinas, Florida and Midwest.",
          "107.70", 0.17, 3.5),
    _spec("LIN", "Linde plc", NASDAQ, MATERIALS,
          "Supplies industrial gases such as oxygen, nitrogen and hydrogen.",
          "416.05", 0.18, 2),
    _spec("FCX", "Freeport-McMoRan Inc.", NYSE, MATERIALS,
          "Mines copper, gold and molybdenum, chiefly in the Americas and Indonesia.",
          "38.36", 0.40, 12),
    _spec("PLD", "Prologis, Inc.", NYSE, REAL_ESTATE,
          "Owns and develops logistics warehouses worldwide (a REIT).",
          "105.66", 0.25, 3.5),
    _spec("AMT", "American Tower Corporation", NYSE, REAL_ESTATE,
          "Owns wireless communications towers and data centers (a REIT).",
          "183.41", 0.25, 2.5),
    # Exchange-traded funds
    _spec("SPY", "SPDR S&P 500 ETF Trust", NYSE_ARCA, ETF,
          "Tracks the S&P 500 index of large US companies.",
          "584.64", 0.14, 50),
    _spec("QQQ", "Invesco QQQ Trust", NASDAQ, ETF,
          "Tracks the Nasdaq-100 index of large non-financial Nasdaq companies.",
          "510.23", 0.19, 35),
    _spec("IWM", "iShares Russell 2000 ETF", NYSE_ARCA, ETF,
          "Tracks the Russell 2000 index of US small-cap companies.",
          "220.96", 0.22, 30),
    _spec("DIA", "SPDR Dow Jones Industrial Average ETF Trust", NYSE_ARCA, ETF,
          "Tracks the 30-stock Dow Jones Industrial Average.",
          "424.46", 0.14, 3),
    _spec("GLD", "SPDR Gold Shares", NYSE_ARCA, ETF,
          "Holds physical gold bullion and tracks the gold spot price.",
          "245.42", 0.15, 8),
    _spec("TLT", "iShares 20+ Year Treasury Bond ETF", NASDAQ, ETF,
          "Holds US Treasury bonds with more than twenty years to maturity.",
          "87.06", 0.15, 40),
    _spec("XLK", "Technology Select Sector SPDR Fund", NYSE_ARCA, ETF,
          "Tracks the technology companies of the S&P 500.",
          "233.01", 0.22, 6),
    _spec("XLF", "Financial Select Sector SPDR Fund", NYSE_ARCA, ETF,
          "Tracks the financial companies of the S&P 500.",
          "48.48", 0.17, 40),
    _spec("XLE", "Energy Select Sector SPDR Fund", NYSE_ARCA, ETF,
          "Tracks the energy companies of the S&P 500.",
          "87.26", 0.22, 16),
)
# fmt: on

BY_SYMBOL: dict[str, SymbolSpec] = {spec.symbol: spec for spec in UNIVERSE}
