"""Regenerate the hand-written fixtures of the bundled sample (data/sample/fixtures/).

    python scripts/make_fixtures.py            # rewrites data/sample/fixtures/* and the sample manifest

The bundled sample (data/sample/README.md) holds real slices of FEVER claims, HotpotQA, DPR-NQ, NQ-Open and one PopQA row, but no
FEVER wiki-pages, no full PopQA TSV and no passage corpus. This script writes those in the
datasets' exact raw formats. Every sentence and passage it writes is a FIXTURE: written for the
demo, plausible but not copied from Wikipedia, and marked as such (fixture ids, a `_fixture`
field/README). The real DPR passages inside dpr_nq_dev_sample.json are reused verbatim as part of
the passage corpus.
"""
from __future__ import annotations

import csv
import io
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample"
FIX = SAMPLE / "fixtures"

# ---------------------------------------------------------------------------------------------
# FEVER wiki-pages: page id -> {sentence number: sentence}. Evidence sentences for the sample's
# SUPPORTS/REFUTES claims (at the sentence numbers the claims cite) and topical sentences for some
# NOT ENOUGH INFO claims.
# ---------------------------------------------------------------------------------------------
WIKI: dict[str, dict[int, str]] = {
    "Soul_Food_-LRB-film-RRB-": {0: 'Soul Food is a 1997 American comedy-drama film produced by Kenneth "Babyface" Edmonds, Tracey Edmonds and Robert Teitel and released by Fox 2000 Pictures.'},
    "Telemundo": {0: "Telemundo is an American Spanish-language terrestrial television network owned by Comcast through the NBCUniversal division NBCUniversal Telemundo Enterprises.",
                  1: "It is the second largest provider of Spanish-language content nationwide behind Univision, with programming syndicated worldwide to more than 100 countries.",
                  4: "The network broadcasts programs and original content aimed at Hispanic and Latino American audiences in the United States."},
    "Hispanic_and_Latino_Americans": {0: "Hispanic Americans and Latino Americans are Americans who are descendants of people from Spain, Mexico and the Spanish-speaking countries of Latin America."},
    "Damon_Albarn": {0: "Damon Albarn (born 23 March 1968) is an English singer, songwriter and record producer.",
                     17: "Albarn's debut solo studio album, Everyday Robots, co-produced by XL Recordings chief Richard Russell, was released on 28 April 2014."},
    "Mogadishu": {0: "Mogadishu, known locally as Hamar, is the capital and most populous city of Somalia."},
    "Savages_-LRB-2012_film-RRB-": {3: "The film is an American production, directed by Oliver Stone and distributed by Universal Pictures."},
    "Andrew_Kevin_Walker": {0: "Andrew Kevin Walker (born August 14, 1964) is an American BAFTA-nominated screenwriter."},
    "Cretaceous": {8: "The Cretaceous ended with a large mass extinction, the Cretaceous-Paleogene extinction event, in which many groups, including non-avian dinosaurs and large marine reptiles, died out.",
                   9: "The end of the Cretaceous is defined by the abrupt Cretaceous-Paleogene boundary, a geologic signature associated with the mass extinction."},
    "Murda_Beatz": {0: "Shane Lee Lindstrom (born February 11, 1994), known professionally as Murda Beatz, is a Canadian hip hop record producer from Fort Erie, Ontario."},
    "Nicholas_Brody": {1: "Nicholas Brody is a fictional character on the American television series Homeland on Showtime, portrayed by Damian Lewis.",
                       4: "Brody is a U.S. Marine Sergeant who was held captive by al-Qaeda as a prisoner of war for eight years."},
    "Charles_Manson": {17: "Manson was convicted of first-degree murder and conspiracy to commit murder for the deaths of seven people, all carried out at his instruction."},
    "Sean_Penn": {5: "Penn made his feature film debut in the 1981 drama Taps and went on to star in Fast Times at Ridgemont High.",
                  7: "He won the Academy Award for Best Actor for his roles in the films Mystic River (2003) and Milk (2008)."},
    "Brad_Wilk": {4: "Wilk co-founded Rage Against the Machine with Tom Morello, Zack de la Rocha and Tim Commerford in 1991."},
    "The_Millers": {1: "The Millers is an American sitcom that aired on CBS from October 3, 2013, to December 29, 2014."},
    "Edgar_Wright": {0: "Edgar Howard Wright (born 18 April 1974) is an English director, screenwriter, producer and actor."},
    "Ann_Richards": {0: "Dorothy Ann Richards (September 1, 1933 - September 13, 2006) was an American politician who served as the 45th Governor of Texas from 1991 to 1995."},
    "Drake_Bell": {18: "In 2011, Bell released an extended play, A Reminder, independently."},
    "A_Reminder": {0: "A Reminder is the first extended play by American singer-songwriter Drake Bell, released on June 14, 2011."},
    "Janet_Leigh": {0: "Janet Leigh (born Jeanette Helen Morrison; July 6, 1927 - October 3, 2004) was an American actress, singer, dancer and author.",
                    12: "Leigh also wrote four books between 1984 and 2002, including two novels."},
    "Simón_Bolívar": {0: "Simón José Antonio de la Santísima Trinidad Bolívar y Palacios, generally known as Simón Bolívar and also as El Libertador, was a Venezuelan military and political leader."},
    "Bermuda_Triangle": {0: "The Bermuda Triangle, also known as the Devil's Triangle, is a loosely defined region in the western part of the North Atlantic Ocean."},
    "Advertising": {0: "Advertising is an audio or visual form of marketing communication that employs an openly sponsored, non-personal message to promote or sell a product, service or idea.",
                    3: "Advertising is communicated through various mass media, including newspapers, magazines, television, radio, outdoor advertising and new media."},
    "Hot_Right_Now": {0: "Hot Right Now is a song by British drum and bass producer DJ Fresh, featuring vocals from Rita Ora."},
    "Harold_Macmillan": {0: "Maurice Harold Macmillan, 1st Earl of Stockton (10 February 1894 - 29 December 1986), was a British Conservative politician who served as Prime Minister of the United Kingdom from 1957 to 1963."},
    "Aristotle": {2: "At seventeen or eighteen years of age, he joined Plato's Academy in Athens and remained there until the age of thirty-seven."},
    "David_Packouz": {0: "David Packouz (born February 16, 1982) is an American former arms dealer, entrepreneur and musician."},
    "Magic_Johnson": {0: 'Earvin "Magic" Johnson Jr. (born August 14, 1959) is an American retired professional basketball player who played point guard for the Los Angeles Lakers for 13 seasons.',
                      1: "After winning championships in high school and college, Johnson was selected first overall in the 1979 NBA draft by the Lakers.",
                      3: "Johnson won five NBA championships with the Lakers.",
                      5: "He retired abruptly in 1991 after announcing that he had contracted HIV, but returned to play for the Lakers in 1996."},
    "Tenacious_D": {0: "Tenacious D is an American comedy rock duo formed in Los Angeles, California in 1994 by actors Jack Black and Kyle Gass."},
    "James_VI_and_I": {10: "He was a major advocate of a single parliament for England and Scotland."},
    "Marcus_Bentley": {0: "Marcus Bentley (born 4 October 1967) is a British actor and broadcaster, best known as the narrator of Big Brother."},
    "Saxony": {0: "Saxony, officially the Free State of Saxony, is a landlocked federal state of Germany, bordering Brandenburg, Saxony-Anhalt, Thuringia, Bavaria, Poland and the Czech Republic."},
    "Mel_B": {5: 'In 2007, she released the single "Today" on Virgin Records, her first release on the label.'},
    "Noah_Cyrus": {4: "She is the youngest daughter of Billy Ray Cyrus and the younger sister of Miley Cyrus."},
    "Mohra": {0: "Mohra is a 1994 Indian action thriller film directed by Rajiv Rai."},
    "Hourglass_-LRB-James_Taylor_album-RRB-": {0: "Hourglass is the fourteenth studio album by American singer-songwriter James Taylor, released in 1997."},
    "James_Taylor": {0: "James Vernon Taylor (born March 12, 1948) is an American singer-songwriter and guitarist."},
    "Shane_Black": {0: "Shane Black (born December 16, 1961) is an American screenwriter, director and actor."},
    "Augustus": {42: "Some ancient writers reported rumours that Augustus' wife Livia poisoned him with figs."},
    "Vedam_-LRB-film-RRB-": {0: "Vedam is a 2010 Indian Telugu-language drama film written and directed by Krish."},
    "Sancho_Panza": {0: "Sancho Panza is a fictional character in the novel Don Quixote written by Spanish author Miguel de Cervantes Saavedra in 1605."},
    "The_Adventures_of_Pluto_Nash": {0: "The Adventures of Pluto Nash is a 2002 science fiction action comedy film directed by Ron Underwood and starring Eddie Murphy."},
    "Hedda_Gabler": {1: "The world premiere of the play took place on 31 January 1891 at the Residenztheater in Munich."},
    "Brazzers": {0: "Brazzers is an adult entertainment production company based in Montreal, Canada."},
    "Tim_Roth": {0: "Timothy Simon Roth (born 14 May 1961) is an English actor and director."},
    "Juventus_F.C.": {1: "The club has worn a black-and-white-striped home uniform since 1903."},
    "Ernest_Medina": {3: "He was the company commander of Charlie Company, whose soldiers participated in the My Lai Massacre in 1968."},
    "Jenna_Jameson": {3: "Before entering the adult film industry, she worked as a stripper and a glamor model."},
    "New_Orleans_Pelicans": {0: "The New Orleans Pelicans are an American professional basketball team based in New Orleans.",
                             1: "The Pelicans compete in the National Basketball Association (NBA) as a member of the Southwest Division of the Western Conference."},
    "Starrcade": {0: "Starrcade was an annual professional wrestling event that began in 1983, held by Jim Crockett Promotions and later World Championship Wrestling.",
                  5: "The first Starrcade was held on Thanksgiving night in 1983 at the Greensboro Coliseum.",
                  6: "From 1988 onward, Starrcade was broadcast on pay-per-view television."},
    "Jack_Falahee": {0: "Jack Falahee (born February 20, 1989) is an American actor, best known for his role as Connor Walsh on How to Get Away with Murder."},
    "Seohyun": {0: "Seo Ju-hyun (born June 28, 1991), known professionally as Seohyun, is a South Korean singer and actress."},
    "Steve_Wozniak": {5: "Wozniak, born in 1950, designed the Apple II, which was introduced in 1977."},
    "A&E_-LRB-TV_channel-RRB-": {0: "A&E is an American cable and satellite television network owned by A&E Networks."},
    "Veeram_-LRB-2014_film-RRB-": {0: "Veeram is a 2014 Indian Tamil-language action film directed by Siva."},
    "Taran_Killam": {0: "Taran Hamilton Killam (born April 1, 1982) is an American actor, comedian and writer."},
    "John_Dolmayan": {0: "John Hackop Dolmayan (born July 15, 1973) is a Lebanese-born Armenian-American musician, best known as the drummer of System of a Down."},
    "Christa_McAuliffe": {4: "In 1983, she took a teaching position at Concord High School in New Hampshire, where she taught social studies."},
    "Colin_Kaepernick": {0: "Colin Rand Kaepernick (born November 3, 1987) is an American football quarterback who played six seasons for the San Francisco 49ers of the National Football League."},
    "Matteo_Renzi": {0: "Matteo Renzi (born 11 January 1975) is an Italian politician who served as Prime Minister of Italy from 2014 to 2016."},
    "Hindu_Kush": {0: "The Hindu Kush is an 800-kilometre-long mountain range that stretches through Afghanistan and northern Pakistan.",
                   5: "The highest point in the Hindu Kush is Tirich Mir, at 7,708 metres, in the Chitral District of Pakistan."},
    "Heart": {18: "The heart beats at a resting rate close to 72 beats per minute."},
    "Weekly_Idol": {1: "The show is hosted by comedians Jeong Hyeong-don and Defconn."},
    "Heavy_metal_music": {0: "Heavy metal is a genre of rock music that developed in the late 1960s and early 1970s, largely in the United Kingdom and the United States."},
    "Topman": {1: "Topman has clothing outlets in six Irish cities and towns, and stores in many other countries."},
    "Wales": {16: "The population of Wales doubled from 587,000 in 1801 to 1,163,000 in 1851."},
    "Tool_-LRB-band-RRB-": {3: "Tool has won three Grammy Awards and has toured worldwide."},
    "YouTube": {0: "YouTube is an American video-sharing website headquartered in San Bruno, California."},
    "Sidse_Babett_Knudsen": {0: "Sidse Babett Knudsen (born 22 November 1968) is a Danish actress."},
    "Asylum_Records": {0: "Asylum Records is an American record label founded in 1971 by David Geffen and his partner Elliot Roberts."},
    "Trollhunters": {0: "Trollhunters is an American computer-animated fantasy television series created for Netflix by Guillermo del Toro and produced by DreamWorks Animation."},
    "Armenian_Genocide": {0: "The Armenian Genocide was the Ottoman government's systematic extermination of 1.5 million Armenians, mostly citizens within the Ottoman Empire."},
    "First_inauguration_of_Bill_Clinton": {0: "The first inauguration of Bill Clinton as the 42nd President of the United States was held on January 20, 1993."},
    "The_Beach_-LRB-film-RRB-": {0: "The Beach is a 2000 adventure drama film directed by Danny Boyle and based on the 1996 novel of the same name by Alex Garland."},
    "The_dress": {5: "The image spread quickly on social media and inspired hashtags such as #TheDress, #whiteandgold and #blackandblue."},
    "Bruce_Shand": {0: "Major Bruce Middleton Hope Shand (22 January 1917 - 11 June 2006) was a British Army officer."},
    "Alexandra_Daddario": {0: "Alexandra Anna Daddario (born March 16, 1986) is an American actress."},
    "14th_Dalai_Lama": {10: "He has lived in exile in Dharamsala, India, since 1959, and has travelled widely."},
    "Caroline_Kennedy": {0: "Caroline Bouvier Kennedy (born November 27, 1957) is an American author, attorney and diplomat."},
    "Anne_Rice": {0: "Anne Rice (born Howard Allen Frances O'Brien; October 4, 1941) is an American author of gothic fiction and Christian literature.",
                  5: "Rice was born in New Orleans and spent much of her early life there."},
    "Stephen_Hillenburg": {4: "As a student he was fascinated with the ocean, and he studied marine biology at Humboldt State University."},
    "Monk": {0: "A monk is a person who practices religious asceticism by monastic living, either alone or with any number of other monks."},
    "The_Mod_Squad": {0: "The Mod Squad is an American crime drama series that ran on ABC from 1968 to 1973."},
    "Arizona": {0: "Arizona is a state in the southwestern region of the United States."},
    "Smriti_Mandhana": {0: "Smriti Mandhana (born 18 July 1996) is an Indian cricketer who plays for the India women's national cricket team."},
    "Emma_Watson": {0: "Emma Charlotte Duerre Watson (born 15 April 1990) is an English actress, model and activist."},
    "Down_with_Love": {0: "Down with Love is a 2003 American romantic comedy film directed by Peyton Reed."},
    "Colombiana": {0: "Colombiana is a 2011 French action film co-written and produced by Luc Besson and directed by Olivier Megaton."},
    "Roar_-LRB-song-RRB-": {0: "Roar is a song by American singer Katy Perry for her fourth studio album, Prism (2013)."},
    "Saturn_Corporation": {0: "The Saturn Corporation, also known as Saturn LLC, was established on January 7, 1985, as a subsidiary of General Motors."},
    "Human_brain": {25: "The hypothalamus is a small region of the human brain that controls body temperature, hunger and thirst."},
    "T2_Trainspotting": {0: "T2 Trainspotting is a 2017 British black comedy drama film directed by Danny Boyle."},
    "Margaret_Thatcher": {8: "Thatcher became the first woman to lead a major political party in the United Kingdom when she was elected leader of the Conservative Party in 1975."},
    "Alice_Cooper": {0: "Alice Cooper (born Vincent Damon Furnier; February 4, 1948) is an American singer, songwriter and actor whose career spans over 50 years."},
    "Herculaneum": {0: "Herculaneum was an ancient Roman town destroyed by the eruption of Mount Vesuvius in 79 AD."},
    "Naples": {34: "The ruins of the ancient Roman towns of Pompeii and Herculaneum lie near Naples."},
    "Anne_Sullivan": {0: "Johanna Mansfield Sullivan Macy (April 14, 1866 - October 20, 1936), better known as Anne Sullivan, was an American teacher best known as the instructor of Helen Keller."},
    "Aleister_Crowley": {0: "Aleister Crowley (born Edward Alexander Crowley; 12 October 1875 - 1 December 1947) was an English occultist and ceremonial magician."},
    "Bessie_Smith": {0: "Bessie Smith (April 15, 1894 - September 26, 1937) was an American blues singer."},
    "Nuuk": {0: "Nuuk is the capital and largest city of Greenland and the seat of its government."},
    "Michigan": {0: "Michigan is a state in the Great Lakes and Midwestern regions of the United States."},
    "Creedence_Clearwater_Revival": {0: "Creedence Clearwater Revival was an American rock band formed in El Cerrito, California in 1967."},
    "Francis_I_of_France": {0: "Francis I (12 September 1494 - 31 March 1547) was King of France from 1515 until his death in 1547."},
    "Peking_University": {0: "Peking University is a major research university in Beijing, China."},
    "Angelsberg": {0: "Angelsberg is a small town in the commune of Fischbach, in central Luxembourg."},
    "Kentucky": {11: "Kentucky is known for horse racing, bourbon distilleries, bluegrass music, college basketball and tobacco."},
    "Vietnam": {0: "Vietnam, officially the Socialist Republic of Vietnam, is a country at the eastern edge of mainland Southeast Asia."},
    "Chris_Kyle": {0: "Christopher Scott Kyle (April 8, 1974 - February 2, 2013) was a United States Navy SEAL and sniper."},
    "Floppy_disk": {0: "A floppy disk is a disk storage medium composed of a thin and flexible magnetic storage medium sealed in a rectangular plastic enclosure."},
    "Forceps": {0: "Forceps are a handheld, hinged instrument used for grasping and holding objects."},
    "Men_in_Black_II": {0: "Men in Black II is a 2002 American science fiction action comedy film directed by Barry Sonnenfeld."},
    "Easy_A": {0: "Easy A is a 2010 American teen comedy film directed by Will Gluck and written by Bert V. Royal."},
    "Michael_Vick": {0: "Michael Dwayne Vick (born June 26, 1980) is a former American football quarterback who played 13 seasons in the National Football League."},
    "Folklore": {1: "Folklore includes oral traditions such as tales, proverbs and jokes."},
    "Bhagat_Singh": {0: "Bhagat Singh (1907 - 23 March 1931) was an Indian socialist revolutionary who is regarded as a folk hero of the Indian independence movement."},
    "Soyuz_-LRB-spacecraft-RRB-": {0: "Soyuz is a series of spacecraft designed for the Soviet space program by the Korolev Design Bureau in the 1960s."},
    "Martin_Van_Buren": {1: "He served as the eighth vice president and as the tenth United States Secretary of State under Andrew Jackson."},
    "Janelle_Monáe": {0: "Janelle Monáe Robinson (born December 1, 1985) is an American singer, songwriter, rapper and actress, signed to Atlantic Records."},
    "Atlantic_Records": {0: "Atlantic Records is an American record label founded in October 1947 by Ahmet Ertegun and Herb Abramson."},
    "Don_Bradman": {0: "Sir Donald George Bradman (27 August 1908 - 25 February 2001) was an Australian international cricketer, widely acknowledged as the greatest batsman of all time.",
                    20: 'Bradman was described by Prime Minister John Howard as the "greatest living Australian".'},
    "Rupert_Murdoch": {0: "Keith Rupert Murdoch (born 11 March 1931) is an Australian-born American media proprietor who founded News Corp.",
                       3: "He is the executive chairman of News Corp and the chairman of Fox Corporation."},
    # topical pages for some NOT ENOUGH INFO claims (they neither support nor refute the claim)
    "Tilda_Swinton": {0: "Katherine Matilda Swinton (born 5 November 1960) is a British actress known for both arthouse and mainstream films.",
                      1: "She won the Academy Award for Best Supporting Actress for her performance in Michael Clayton."},
    "Happiness_in_Slavery": {0: "Happiness in Slavery is a song by American industrial rock band Nine Inch Nails from their 1992 EP Broken."},
    "Shooter_-LRB-TV_series-RRB-": {0: "Shooter is an American drama television series based on the 2007 film of the same name, following Bob Lee Swagger, a decorated former Marine sniper."},
    "House_-LRB-TV_series-RRB-": {0: "House is an American medical drama television series that originally ran on the Fox network for eight seasons, from 2004 to 2012."},
    "Annette_Badland": {0: "Annette Badland (born 26 August 1950) is an English actress known for television series such as EastEnders and Doctor Who."},
    "Marnie_-LRB-film-RRB-": {0: "Marnie is a 1964 American psychological thriller film directed by Alfred Hitchcock."},
    "Private_Lives": {0: "Private Lives is a comedy of manners by Noël Coward, first produced in 1930."},
    "In_the_End": {0: "In the End is a song by American rock band Linkin Park, released as the fourth single from their debut album Hybrid Theory."},
    "A_View_to_a_Kill": {0: "A View to a Kill is a 1985 spy film and the fourteenth in the James Bond series produced by Eon Productions."},
    "Papua_-LRB-province-RRB-": {0: "Papua is the largest and easternmost province of Indonesia, comprising most of Western New Guinea."},
    "Working_animal": {0: "A working animal is an animal, usually domesticated, that is kept by humans and trained to perform tasks."},
    "Billboard_Dad": {0: "Billboard Dad is a 1998 American direct-to-video comedy film starring Mary-Kate and Ashley Olsen."},
    "Viola_Davis": {0: "Viola Davis (born August 11, 1965) is an American actress and producer."},
    "Island_Records": {0: "Island Records is a British-American record label founded in Jamaica in 1959 by Chris Blackwell."},
    "Sikkim": {0: "Sikkim is a state in northeast India, bordered by Tibet, Nepal and Bhutan."},
    "Ron_Weasley": {0: "Ronald Bilius Weasley is a fictional character in J. K. Rowling's Harry Potter fantasy novel series."},
    "The_Road_to_El_Dorado": {0: "The Road to El Dorado is a 2000 American animated adventure comedy film produced by DreamWorks Animation, featuring the voices of Kevin Kline and Kenneth Branagh."},
    "Ashton_Kutcher": {0: "Christopher Ashton Kutcher (born February 7, 1978) is an American actor, producer and investor."},
    "Psych": {0: "Psych is an American detective comedy-drama television series created by Steve Franks that aired on USA Network."},
    "Raees_-LRB-film-RRB-": {0: "Raees is a 2017 Indian Hindi-language crime thriller film directed by Rahul Dholakia and starring Shah Rukh Khan."},
    "Angela_Bassett": {0: "Angela Evelyn Bassett (born August 16, 1958) is an American actress, director and producer."},
    "Lockheed_Martin": {0: "Lockheed Martin Corporation is an American aerospace, arms, defense and security company with worldwide interests."},
    "Tremont_Street_Subway": {0: "The Tremont Street Subway in Boston is the oldest subway tunnel in North America, opened in 1897."},
    "Penibaetic_System": {0: "The Penibaetic System is the southernmost of the three systems of mountain ranges in the Baetic System in the south of the Iberian Peninsula."},
    "Quran": {0: "The Quran is the central religious text of Islam, believed by Muslims to be a revelation from God."},
    "Randy_Savage": {0: "Randall Mario Poffo (1952 - 2011), better known by his ring name Randy Savage, was an American professional wrestler."},
    "Diwali": {0: "Diwali is a festival of lights and one of the major festivals celebrated by Hindus, Jains and Sikhs."},
    "Edmund_H._North": {0: "Edmund Hall North (1911 - 1990) was an American screenwriter who shared an Academy Award for the screenplay of Patton."},
    "No_Country_for_Old_Men_-LRB-film-RRB-": {0: "No Country for Old Men is a 2007 American crime thriller film written and directed by Joel and Ethan Coen, starring Tommy Lee Jones, Javier Bardem and Josh Brolin."},
    "Palo_Alto,_California": {0: "Palo Alto is a charter city in the northwest corner of Santa Clara County, California, in the San Francisco Bay Area."},
    "Roland_Emmerich": {0: "Roland Emmerich (born 10 November 1955) is a German film director, screenwriter and producer."},
    "Stephen_Colbert": {0: "Stephen Tyrone Colbert (born May 13, 1964) is an American comedian and television host."},
    "Wildfang": {0: "Wildfang is a women's apparel company based in Portland, Oregon."},
}

# ---------------------------------------------------------------------------------------------
# PopQA rows (subject, property, object, answers, s_pop, o_pop) and a corpus passage for each
# ---------------------------------------------------------------------------------------------
POPQA_TEMPLATES = {
    "occupation": "What is {}'s occupation?", "place of birth": "In what city was {} born?",
    "genre": "What genre is {}?", "country": "In what country is {}?",
    "director": "Who was the director of {}?", "capital": "What is the capital of {}?",
    "author": "Who is the author of {}?", "composer": "Who was the composer of {}?",
    "sport": "What sport does {} play?",
}
POPQA = [
    ("Kazuo Ishiguro", "occupation", "novelist", ["novelist", "writer", "author"], 51230, 40211,
     "Kazuo Ishiguro (born 8 November 1954) is a British novelist and screenwriter born in Nagasaki, Japan. He is known for The Remains of the Day and Never Let Me Go, and received the Nobel Prize in Literature in 2017."),
    ("Marie Curie", "occupation", "physicist", ["physicist", "chemist", "scientist"], 212300, 30122,
     "Marie Curie (1867-1934) was a Polish and naturalised-French physicist and chemist who conducted pioneering research on radioactivity. She was the first woman to win a Nobel Prize."),
    ("Ansel Adams", "occupation", "photographer", ["photographer"], 38440, 12093,
     "Ansel Easton Adams (1902-1984) was an American landscape photographer and environmentalist known for his black-and-white images of the American West, especially Yosemite National Park."),
    ("Zaha Hadid", "occupation", "architect", ["architect"], 45120, 52381,
     "Dame Zaha Mohammad Hadid (1950-2016) was an Iraqi-British architect, artist and designer, recognised as a major figure in architecture of the late 20th and early 21st centuries."),
    ("Yo-Yo Ma", "occupation", "cellist", ["cellist", "musician"], 60230, 8812,
     "Yo-Yo Ma (born October 7, 1955) is an American cellist. Born in Paris to Chinese parents, he performed as a child prodigy and has recorded more than 90 albums."),
    ("Frida Kahlo", "place of birth", "Coyoacán", ["Coyoacán", "Coyoacan"], 98770, 9431,
     "Magdalena Carmen Frida Kahlo y Calderón (1907-1954) was a Mexican painter known for her self-portraits. Kahlo was born and raised in Coyoacán, Mexico City, in La Casa Azul."),
    ("Ludwig van Beethoven", "place of birth", "Bonn", ["Bonn"], 180450, 41222,
     "Ludwig van Beethoven (1770-1827) was a German composer and pianist. Beethoven was born in Bonn, then the capital of the Electorate of Cologne, and moved to Vienna in his early twenties."),
    ("Nikola Tesla", "place of birth", "Smiljan", ["Smiljan"], 230110, 3120,
     "Nikola Tesla (1856-1943) was a Serbian-American inventor and engineer best known for his contributions to alternating current. Tesla was born in the village of Smiljan, in the Austrian Empire."),
    ("Pablo Neruda", "place of birth", "Parral", ["Parral"], 52340, 2210,
     "Pablo Neruda (1904-1973) was a Chilean poet-diplomat and politician who won the 1971 Nobel Prize in Literature. Neruda was born in Parral, Chile, a city in Linares Province."),
    ("Haruki Murakami", "place of birth", "Kyoto", ["Kyoto", "Kyōto"], 75400, 90120,
     "Haruki Murakami (born January 12, 1949) is a Japanese writer. Murakami was born in Kyoto during the post-war baby boom and grew up in Nishinomiya, Ashiya and Kobe."),
    ("Miles Davis", "genre", "jazz", ["jazz"], 88120, 150330,
     "Miles Dewey Davis III (1926-1991) was an American trumpeter, bandleader and composer. He is among the most influential figures in the history of jazz and 20th-century music."),
    ("Ramones", "genre", "punk rock", ["punk rock", "punk"], 70110, 61200,
     "The Ramones were an American punk rock band that formed in the New York City neighborhood of Forest Hills, Queens, in 1974. They are often cited as the first true punk rock group."),
    ("Dolly Parton", "genre", "country music", ["country music", "country"], 140220, 98330,
     "Dolly Rebecca Parton (born January 19, 1946) is an American singer, songwriter and actress. After achieving success as a songwriter for others, Parton became one of the best-selling artists in country music."),
    ("Bob Marley", "genre", "reggae", ["reggae"], 160330, 70120,
     "Robert Nesta Marley (1945-1981) was a Jamaican singer, songwriter and musician. Considered one of the pioneers of reggae, his career fused elements of reggae, ska and rocksteady."),
    ("Metallica", "genre", "heavy metal", ["heavy metal", "thrash metal", "metal"], 130220, 110430,
     "Metallica is an American heavy metal band formed in Los Angeles in 1981 by drummer Lars Ulrich and vocalist James Hetfield. Its fast tempos helped found thrash metal."),
    ("Lake Bled", "country", "Slovenia", ["Slovenia"], 12030, 140220,
     "Lake Bled is a lake in the Julian Alps of the Upper Carniolan region of northwestern Slovenia, where it adjoins the town of Bled. It is a major tourist attraction."),
    ("Angkor Wat", "country", "Cambodia", ["Cambodia", "Kingdom of Cambodia"], 61020, 120330,
     "Angkor Wat is a Hindu-Buddhist temple complex in Cambodia. Built in the early 12th century for King Suryavarman II, it is the largest religious structure in the world."),
    ("Uluru", "country", "Australia", ["Australia", "Commonwealth of Australia"], 33020, 410220,
     "Uluru, also known as Ayers Rock, is a large sandstone formation in the southern part of the Northern Territory in central Australia. It is sacred to the Pitjantjatjara people."),
    ("Timbuktu", "country", "Mali", ["Mali", "Republic of Mali"], 35060, 70120,
     "Timbuktu is a city in Mali, situated 20 km north of the Niger River. The town is on the UNESCO World Heritage List for its historic mosques and manuscripts."),
    ("Machu Picchu", "country", "Peru", ["Peru", "Republic of Peru"], 85030, 160220,
     "Machu Picchu is a 15th-century Inca citadel located in the Eastern Cordillera of southern Peru on a 2,430-metre mountain ridge."),
    ("Rashomon", "director", "Akira Kurosawa", ["Akira Kurosawa", "Kurosawa"], 30220, 70120,
     "Rashomon is a 1950 Japanese jidaigeki film directed by Akira Kurosawa, from a screenplay he co-wrote with Shinobu Hashimoto. It stars Toshiro Mifune and Machiko Kyō."),
    ("Amélie", "director", "Jean-Pierre Jeunet", ["Jean-Pierre Jeunet"], 42010, 11220,
     "Amélie is a 2001 French romantic comedy film directed by Jean-Pierre Jeunet. Written by Jeunet with Guillaume Laurant, it stars Audrey Tautou as a shy waitress in Montmartre."),
    ("Vertigo", "director", "Alfred Hitchcock", ["Alfred Hitchcock", "Hitchcock"], 52030, 150220,
     "Vertigo is a 1958 American film noir psychological thriller directed and produced by Alfred Hitchcock, starring James Stewart and Kim Novak."),
    ("Spirited Away", "director", "Hayao Miyazaki", ["Hayao Miyazaki", "Miyazaki"], 90120, 98100,
     "Spirited Away is a 2001 Japanese animated fantasy film written and directed by Hayao Miyazaki, animated by Studio Ghibli. It won the Academy Award for Best Animated Feature."),
    ("Pan's Labyrinth", "director", "Guillermo del Toro", ["Guillermo del Toro", "del Toro"], 48020, 88120,
     "Pan's Labyrinth is a 2006 dark fantasy film written, directed and co-produced by Guillermo del Toro. It is set in Spain five years after the Spanish Civil War."),
    ("Burkina Faso", "capital", "Ouagadougou", ["Ouagadougou"], 70220, 22030,
     "Burkina Faso is a landlocked country in West Africa. Its capital and largest city is Ouagadougou, and the country was known as Upper Volta until 1984."),
    ("Bhutan", "capital", "Thimphu", ["Thimphu"], 110330, 20120,
     "Bhutan is a landlocked country in the Eastern Himalayas, bordered by China to the north and India to the south. Its capital and largest city is Thimphu."),
    ("Tasmania", "capital", "Hobart", ["Hobart"], 60330, 42010,
     "Tasmania is an island state of Australia, located 240 km south of the Australian mainland. The state capital and largest city is Hobart."),
    ("Manitoba", "capital", "Winnipeg", ["Winnipeg"], 45010, 61030,
     "Manitoba is a province of Canada at the longitudinal centre of the country. Its capital and largest city, Winnipeg, is home to over half of the province's population."),
    ("Bavaria", "capital", "Munich", ["Munich", "München"], 72030, 150220,
     "Bavaria, officially the Free State of Bavaria, is a state in the southeast of Germany. Its capital and largest city is Munich, the third-largest city in Germany."),
    ("One Hundred Years of Solitude", "author", "Gabriel García Márquez", ["Gabriel García Márquez", "Gabriel Garcia Marquez", "Gabo"], 40110, 95020,
     "One Hundred Years of Solitude is a 1967 novel by Colombian author Gabriel García Márquez that tells the multi-generational story of the Buendía family in the town of Macondo."),
    ("Things Fall Apart", "author", "Chinua Achebe", ["Chinua Achebe", "Achebe"], 45020, 40110,
     "Things Fall Apart is the debut novel by Nigerian author Chinua Achebe, first published in 1958. It follows Okonkwo, a leader and wrestling champion in the fictional Igbo village of Umuofia."),
    ("The Tale of Genji", "author", "Murasaki Shikibu", ["Murasaki Shikibu", "Lady Murasaki"], 22030, 20110,
     "The Tale of Genji is a classic work of Japanese literature written by the noblewoman and lady-in-waiting Murasaki Shikibu in the early 11th century."),
    ("Middlemarch", "author", "George Eliot", ["George Eliot", "Mary Ann Evans"], 18020, 42010,
     "Middlemarch, A Study of Provincial Life is a novel by English author Mary Ann Evans, who wrote as George Eliot. It appeared in eight instalments in 1871 and 1872."),
    ("The Master and Margarita", "author", "Mikhail Bulgakov", ["Mikhail Bulgakov", "Bulgakov"], 30020, 25030,
     "The Master and Margarita is a novel by Mikhail Bulgakov, written in the Soviet Union between 1928 and 1940 but published only in 1967."),
    ("The Rite of Spring", "composer", "Igor Stravinsky", ["Igor Stravinsky", "Stravinsky"], 20110, 60220,
     "The Rite of Spring is a ballet and orchestral concert work by the Russian composer Igor Stravinsky, written for the 1913 Paris season of Sergei Diaghilev's Ballets Russes."),
    ("Carmen", "composer", "Georges Bizet", ["Georges Bizet", "Bizet"], 38020, 30110,
     "Carmen is an opera in four acts by the French composer Georges Bizet. The libretto was written by Henri Meilhac and Ludovic Halévy, and it premiered in Paris in 1875."),
    ("The Four Seasons", "composer", "Antonio Vivaldi", ["Antonio Vivaldi", "Vivaldi"], 35020, 70110,
     "The Four Seasons is a group of four violin concerti by Italian composer Antonio Vivaldi, each of which gives musical expression to a season of the year. They were written around 1718-1720."),
    ("Serena Williams", "sport", "tennis", ["tennis"], 190220, 160330,
     "Serena Jameka Williams (born September 26, 1981) is an American former professional tennis player who won 23 Grand Slam singles titles, the most by any player in the Open Era."),
    ("Lionel Messi", "sport", "association football", ["association football", "football", "soccer"], 420330, 510220,
     "Lionel Andrés Messi (born 24 June 1987) is an Argentine professional footballer. Widely regarded as one of the greatest players in association football, he captains the Argentina national team."),
]
GEORGE_RANKIN_PASSAGE = ("George Rankin", "George James Rankin (1887-1957) was an Australian soldier and politician. He served in the "
                         "Australian Imperial Force during the First World War and later sat in the Senate and the House of Representatives.")

# ---------------------------------------------------------------------------------------------
# Passages that answer some NQ-Open sample questions (title, text)
# ---------------------------------------------------------------------------------------------
NQ_PASSAGES = [
    ("Apollo 17", "Apollo 17 was the final mission of NASA's Apollo program. Eugene Cernan and Harrison Schmitt walked on the Moon, and Cernan, the last person to walk on it, re-entered the lunar module on 14 December 1972 UTC. No one has been on the Moon since December 1972."),
    ("He Ain't Heavy, He's My Brother", "\"He Ain't Heavy, He's My Brother\" is a ballad whose music was written by Bobby Scott and lyrics by Bob Russell. Originally recorded by Kelly Gordon in 1969, it became a worldwide hit for The Hollies later that year."),
    ("The Bastard Executioner", "The Bastard Executioner is an American historical fiction drama television series created by Kurt Sutter. It aired on FX for one season of ten episodes in 2015 before it was cancelled."),
    ("Philadelphia Eagles", "The Philadelphia Eagles won Super Bowl LII at the end of the 2017 season, defeating the New England Patriots 41-33 in Minneapolis for the franchise's first Super Bowl title."),
    ("2017 NCAA Division I Women's Basketball Tournament", "South Carolina won the 2017 NCAA women's basketball national championship, defeating Mississippi State 67-55 in the final game in Dallas. It was the first title for coach Dawn Staley."),
    ("Isle of Wight", "During the last Ice Age the Isle of Wight was joined to the mainland of Great Britain; it became an island when rising sea levels flooded the Solent about 7,000 years ago."),
    ("James VI and I", "James I was King of England and Ireland from the union of the Scottish and English crowns in 1603 until his death in 1625, and so was the ruler of England in 1616, the year Shakespeare died."),
    ("IEEE 802.11a-1999", "IEEE 802.11a-1999 is an amendment to the IEEE 802.11 wireless local network specification that uses the 5 GHz band. Its maximum data rate is 54\u00a0Mbit/s, with error-correction overhead."),
    ("Madhya Pradesh", "Madhya Pradesh is a state in central India. Because it lies in the centre of India, it is often called the heart of India. Its capital is Bhopal and its largest city is Indore."),
    ("Sorry (I Ran All the Way Home)", "\"Sorry (I Ran All the Way Home)\" is a 1959 doo-wop song sung by the Impalas, a group from Brooklyn. It reached number two on the Billboard Hot 100."),
    ("Wallace (surname)", "Wallace is a Scottish surname derived from the Anglo-Norman French word waleis, meaning a Welshman or a Briton of Strathclyde."),
    ("Ben Stone (Law & Order)", "Benjamin Stone is a fictional character on the NBC legal drama Law & Order, played by Michael Moriarty from 1990 to 1994 as the show's Executive Assistant District Attorney."),
    ("Nala (The Lion King)", "In Disney's 1994 animated film The Lion King, adult Nala is voiced by Moira Kelly, while young Nala is voiced by Niketa Calame. Her singing voice is provided by Sally Dworsky and Laura Williams."),
    ("Darth Vader", "Darth Vader is the Sith identity of Anakin Skywalker, a former Jedi Knight who wears a black mask and armour after being badly burned on Mustafar."),
    ("Oath of Allegiance (United States)", "The United States Oath of Allegiance is an allegiance oath that must be taken by all immigrants who wish to become United States citizens at their naturalization ceremony."),
    ("Sarah", "In the Book of Genesis, Sarah gives birth to Isaac when her husband Abraham is one hundred years old and she herself is ninety."),
    ("Ethiopian Airlines Flight 961", "Ethiopian Airlines Flight 961 was hijacked on 23 November 1996 and crashed into the Indian Ocean near the Comoros after running out of fuel, killing 125 of the 175 people on board."),
    ("The Vampire Diaries", "The Vampire Diaries is an American supernatural drama television series that ran on The CW for eight seasons, from September 2009 to March 2017, with 171 episodes."),
    ("Dragon Ball Z", "Dragon Ball Z is a Japanese anime television series produced by Toei Animation. It aired on Fuji TV from 1989 to 1996 and ran for 291 episodes."),
    ("Wonder (film)", "Wonder is a 2017 American drama film directed by Stephen Chbosky. It stars Julia Roberts, Owen Wilson and Jacob Tremblay, who plays Auggie Pullman, a boy with a facial difference."),
    ("Edmund Barton", "Sir Edmund Barton was an Australian politician and judge who served as the first Prime Minister of Australia, taking office at Federation on 1 January 1901 and winning the first federal election in March 1901."),
    ("Anne with an E", "Anne with an E is a Canadian television series adapted from Anne of Green Gables. Amybeth McNulty plays Anne Shirley, R. H. Thomson plays Matthew Cuthbert and Geraldine James plays Marilla."),
    ("21 Guns (song)", "The music video for Green Day's \"21 Guns\" shows a couple hiding in a white room while shots are fired at them; the girl is played by actress Lisa Stelly."),
    ("The Dark Knight (film)", "The Dark Knight is a 2008 superhero film directed by Christopher Nolan. Christian Bale plays Batman and Heath Ledger plays the Joker, a role that earned Ledger a posthumous Academy Award."),
    ("South Asian Association for Regional Cooperation", "The South Asian Association for Regional Cooperation (SAARC) is a regional organisation of South Asian states. It was formed in Dhaka on 8 December 1985."),
    ("The Hunger Games (novel)", "The Hunger Games is a 2008 dystopian novel by Suzanne Collins. The first Hunger Games book was published on September 14, 2008, by Scholastic."),
    ("The Rose (film)", "The Rose is a 1979 American drama film directed by Mark Rydell. Bette Midler portrays Mary Rose Foster, a self-destructive rock star loosely based on Janis Joplin."),
    ("Depeche Mode", "Depeche Mode are an English electronic band formed in Basildon in 1980. David Gahan has been the band's lead singer since its founding, with Martin Gore as main songwriter."),
    ("Total quality management", "Total quality management describes a management approach to long-term success through customer satisfaction. The concept is most often associated with the American statistician W. Edwards Deming."),
    ("Can't Get You Out of My Head", "\"Can't Get You Out of My Head\" is a song recorded by Kylie Minogue for her eighth album, Fever. It was written and produced by Cathy Dennis and Rob Davis."),
    ("Taylor Swift (album)", "Taylor Swift is the debut studio album by the American singer-songwriter Taylor Swift. It was released on October 24, 2006, by Big Machine Records."),
    ("Fifty Shades trilogy", "The Fifty Shades trilogy by E. L. James comprises Fifty Shades of Grey, Fifty Shades Darker and Fifty Shades Freed, published between 2011 and 2012."),
    ("Omar Khayyam", "Omar Khayyam (1048-1131) was a Persian polymath, mathematician, astronomer and poet, and one of the great Islamic scholars of his age. He died in 1131 in Nishapur."),
    ("Guy Boucher", "Guy Boucher is a Canadian ice hockey coach. He was named head coach of the Ottawa Senators of the National Hockey League in May 2016."),
    ("Flag of the Netherlands", "The flag of the Netherlands is a horizontal tricolour of red, white and blue. It is one of the oldest tricolour flags in the world."),
    ("Lord's Prayer", "The Lord's Prayer is a central Christian prayer. It appears in the Gospel of Matthew as part of the Sermon on the Mount, and in a shorter form in the Gospel of Luke."),
    ("Ten Commandments", "The Ten Commandments are a set of biblical principles relating to ethics and worship. They appear twice in the Hebrew Bible, in the books of Exodus and Deuteronomy."),
    ("Italian Campaign (World War II)", "After the Axis defeat in North Africa in May 1943, the Allies moved on to Italy, invading Sicily in July 1943 and the Italian mainland in September."),
    ("Aorta", "The aorta is the main and largest artery in the human body. It originates from the left ventricle of the heart and carries oxygenated blood to the rest of the body."),
    ("Todd Bridges", "Todd Bridges is an American actor best known as Willis Jackson on Diff'rent Strokes. As a child actor he played Solomon in an episode of Little House on the Prairie."),
    ("Papa's Got a Brand New Bag", "\"Papa's Got a Brand New Bag\" is a song written and recorded by James Brown. Released as a two-part single in 1965, it was his first top ten hit on the Billboard Hot 100."),
    ("Spike and Tyke", "Spike is the bulldog in the Tom and Jerry cartoons, often shown protecting his son Tyke from Tom."),
    ("2017 Indian presidential election", "The 2017 Indian presidential election was held in July 2017. Ram Nath Kovind was nominated by the ruling coalition and Meira Kumar by the opposition; Kovind won."),
    ("U.S. Route 66", "U.S. Route 66 ran from Chicago, Illinois, through Missouri, Oklahoma, Texas, New Mexico and Arizona before ending in Santa Monica on the west coast in California."),
    ("Public Health Cigarette Smoking Act", "The Public Health Cigarette Smoking Act was signed by President Nixon in 1970. It banned cigarette advertising on television and radio in the United States from January 2, 1971."),
    ("Radian", "Angles in a circle, and distances between points on a sphere, are measured in units called radians or degrees. One radian is the angle subtended by an arc equal in length to the radius."),
    ("Bad Boys (Inner Circle song)", "\"Bad Boys\" is a song by the Jamaican reggae band Inner Circle. It is best known as the theme song of the American television show Cops."),
    ("Captain Phasma", "Captain Phasma is a character in the Star Wars franchise, played by Gwendoline Christie in Star Wars: The Force Awakens (2015) and The Last Jedi (2017)."),
    ("Snickers", "Snickers is a chocolate bar made by Mars. In the United Kingdom and Ireland it was sold under the name Marathon until 19 July 1990, when it was renamed to match the global brand."),
    ("Bartolomeu Dias", "Bartolomeu Dias was a Portuguese explorer who in 1488 captained the first European ship to sail around the southern tip of Africa, the Cape of Good Hope."),
    ("Forbidden City", "The Forbidden City is a palace complex in Beijing. The Yongle Emperor, Zhu Di, ordered it to be built in 1406, and it served as the home of Chinese emperors for almost 500 years."),
    ("The Birds and the Bees (Jewel Akens song)", "\"The Birds and the Bees\" is a song written by Herb Newman. It was a 1965 hit sung by Jewel Akens, reaching number three in the United States."),
    ("Rugrats", "Rugrats is an American animated television series created by Arlene Klasky, Gábor Csupó and Paul Germain. It aired on Nickelodeon for 9 seasons, from 1991 to 2004."),
    ("Graham McTavish", "Graham McTavish is a Scottish actor. He plays the Saint of Killers in the AMC television series Preacher and Dougal MacKenzie in Outlander."),
    ("Super Bowl 50 halftime show", "The Super Bowl 50 halftime show took place on February 7, 2016, at Levi's Stadium. It was headlined by Coldplay, with special guest performers Beyoncé and Bruno Mars."),
    ("Percy Jackson & the Olympians: The Lightning Thief", "Percy Jackson & the Olympians: The Lightning Thief is a 2010 fantasy film. Principal photography took place in Vancouver, British Columbia, in April 2009."),
    ("UConn Huskies women's basketball", "The UConn Huskies women's basketball team won 111 straight games between November 2014 and March 2017, the longest winning streak in college basketball history."),
    ("Ottoman Empire", "The Ottoman Empire was an empire that controlled much of Southeastern Europe, Western Asia and North Africa between the 14th and early 20th centuries."),
]


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------
_ESC = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}


def fever_tokenize(s: str) -> str:
    """Write a sentence the way FEVER's wiki-pages hold it: PTB escapes, spaced punctuation."""
    s = re.sub(r'"([^"]*)"', r"`` \1 ''", s)
    for k, v in _ESC.items():
        s = s.replace(k, f" {v} ")
    s = re.sub(r"([,;:])(\s)", r" \1\2", s)
    s = re.sub(r"\.$", " .", s)
    s = re.sub(r"(\w)'s\b", r"\1 's", s)
    return " ".join(s.split())


def wiki_lines(sents: dict[int, str]) -> str:
    n = max(sents) + 1
    rows = []
    for i in range(n):
        s = sents.get(i)
        if s is None:
            rows.append(f"{i}\t")
        else:
            links = [w for w in re.findall(r"\b[A-Z][a-z]+(?: [A-Z][a-z]+)+\b", s)][:2]
            rows.append("\t".join([str(i), fever_tokenize(s)] + [x for l in links for x in (l, l)]))
    return "\n".join(rows)


def tsv(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    w.writerows(rows)
    return buf.getvalue()


def write_wiki() -> Path:
    out = FIX / "fever" / "wiki-pages" / "wiki-fixture-001.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(json.dumps({"id": "", "text": "", "lines": ""}) + "\n")   # the real dump starts like this
        for page in sorted(WIKI):
            sents = WIKI[page]
            text = " ".join(fever_tokenize(sents[i]) for i in sorted(sents))
            f.write(json.dumps({"id": page, "text": text, "lines": wiki_lines(sents), "_fixture": True},
                               ensure_ascii=False) + "\n")
    return out


def write_popqa() -> Path:
    header = ["id", "subj", "prop", "obj", "subj_id", "prop_id", "obj_id", "s_aliases", "o_aliases", "s_uri",
              "o_uri", "s_wiki_title", "o_wiki_title", "s_pop", "o_pop", "question", "possible_answers"]
    prop_ids = {p: i for i, p in enumerate(POPQA_TEMPLATES, start=1)}
    rows = [header]
    for n, (subj, prop, obj, answers, s_pop, o_pop, _) in enumerate(POPQA, start=1):
        rows.append([str(9_000_000 + n), subj, prop, obj, str(8_000_000 + n), str(prop_ids[prop]), str(7_000_000 + n),
                     "[]", json.dumps(answers[1:], ensure_ascii=False), "", "", subj, obj, str(s_pop), str(o_pop),
                     POPQA_TEMPLATES[prop].format(subj), json.dumps(answers, ensure_ascii=False)])
    out = FIX / "popqa" / "popQA.fixture.tsv"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(tsv(rows), encoding="utf-8")
    return out


def write_corpus() -> Path:
    dpr = json.loads((SAMPLE / "raw" / "nq" / "dpr_nq_dev_sample.json").read_text(encoding="utf-8"))
    seen: dict[str, tuple[str, str]] = {}
    for q in dpr:
        for key in ("positive_ctxs", "negative_ctxs", "hard_negative_ctxs"):
            for c in q[key]:
                seen.setdefault(str(c["passage_id"]), (c["text"], c["title"]))
    rows = [["id", "text", "title"]]
    rows += [[pid, text, title] for pid, (text, title) in sorted(seen.items(), key=lambda kv: int(kv[0]))]
    written = [(t, p) for t, p in NQ_PASSAGES] + [(s, p) for s, _, _, _, _, _, p in POPQA] + [GEORGE_RANKIN_PASSAGE]
    rows += [[f"fixture-{i:04d}", text, title] for i, (title, text) in enumerate(written, start=1)]
    out = FIX / "corpus" / "psgs_w100.fixture.tsv"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(tsv(rows), encoding="utf-8")
    return out


def main() -> None:
    for p in (write_wiki(), write_popqa(), write_corpus()):
        print(f"wrote {p.relative_to(ROOT)} ({p.stat().st_size} bytes)")
    sys.path.insert(0, str(ROOT))
    from factuality.raw_inputs import (
        MANIFEST_NAME,
        SAMPLE_DIR,
        discover_inputs,
        verify_hashes,
    )
    from factuality.records import atomic_write_json
    from factuality.stages.build import BuildConfig
    cfg = BuildConfig()
    files = sorted({p for fs in discover_inputs([SAMPLE_DIR / "raw", SAMPLE_DIR / "fixtures"], cfg.sources).values() for p in fs})
    _, manifest = verify_hashes(files, SAMPLE_DIR / MANIFEST_NAME, accept_new=True)
    if manifest is not None:
        atomic_write_json(SAMPLE_DIR / MANIFEST_NAME, manifest)
        print(f"updated {SAMPLE_DIR / MANIFEST_NAME}")


if __name__ == "__main__":
    main()
