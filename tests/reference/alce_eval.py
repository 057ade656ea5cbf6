"""Test-only transcription of princeton-nlp/ALCE `eval.py` and `utils.py` (commit 246c476a, MIT
license): the functions tests/test_published_measures.py runs against factuality/alce.py. Kept as
close to the original as the injections allow: the entailment function (`run_nli`, ALCE's
_run_nli_autoais) and the sentence splitter (`sent_tokenize`, NLTK's) are passed in, logging and
the progress bar are dropped. Not used by the package."""
import copy
import re
import string

import numpy as np


def normalize_answer(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def remove_citations(sent):
    return re.sub(r"\[\d+", "", re.sub(r" \[\d+", "", sent)).replace(" |", "").replace("]", "")


def exact_presence(short_answers, context):
    n_short_answers = [normalize_answer(sa) for sa in short_answers]
    n_context = normalize_answer(context)
    for ans in n_short_answers:
        if ans in n_context:
            return True
    return False


def compute_str_em(data):
    if 'qa_pairs' not in data[0] or data[0]['qa_pairs'] is None:
        return 0, 0
    acc = []
    hit = []
    for item in data:
        loc_acc = []
        for qa_pair in item['qa_pairs']:
            loc_acc.append(exact_presence(qa_pair['short_answers'], item["output"]))
        acc.append(np.mean(loc_acc))
        hit.append(int(np.mean(loc_acc) == 1))
    return 100 * np.mean(acc), 100 * np.mean(hit)


def compute_len(data):
    res, cntr = 0, 0
    for item in data:
        res += len(item["output"].split())
        cntr += 1
    return res / cntr


def compute_claims(data, run_nli):
    scores = []
    for item in data:
        normalized_output = remove_citations(item['output'])
        entail = 0
        claims = item["claims"]
        for claim in claims:
            entail += run_nli(normalized_output, claim)
        scores.append(entail / len(claims))
    return 100 * np.mean(scores)


def compute_autoais(data, run_nli, sent_tokenize, qampari=False, at_most_citations=None):
    def _format_document(doc):
        if "sent" in doc:
            return "Title: %s\n%s" % (doc['title'], doc['sent'])
        else:
            return "Title: %s\n%s" % (doc['title'], doc['text'])

    ais_scores = []
    ais_scores_prec = []
    for item in data:
        if qampari:
            sents = [item['question'] + " " + x.strip() for x in item['output'].rstrip().rstrip(".").rstrip(",").split(",")]
        else:
            sents = sent_tokenize(item['output'])
        if len(sents) == 0:
            continue
        target_sents = [remove_citations(sent).strip() for sent in sents]
        entail = 0
        entail_prec = 0
        total_citations = 0
        for sent_id, sent in enumerate(sents):
            target_sent = target_sents[sent_id]
            joint_entail = -1
            ref = [int(r[1:]) - 1 for r in re.findall(r"\[\d+", sent)]
            if len(ref) == 0:
                joint_entail = 0
            elif any([ref_id >= len(item['docs']) for ref_id in ref]):
                joint_entail = 0
            else:
                if at_most_citations is not None:
                    ref = ref[:at_most_citations]
                total_citations += len(ref)
                joint_passage = '\n'.join([_format_document(item['docs'][psgs_id]) for psgs_id in ref])
            if joint_entail == -1:
                joint_entail = run_nli(joint_passage, target_sent)
            entail += joint_entail
            if joint_entail and len(ref) > 1:
                for psgs_id in ref:
                    passage = _format_document(item['docs'][psgs_id])
                    nli_result = run_nli(passage, target_sent)
                    if not nli_result:
                        subset_exclude = copy.deepcopy(ref)
                        subset_exclude.remove(psgs_id)
                        passage = '\n'.join([_format_document(item['docs'][pid]) for pid in subset_exclude])
                        nli_result = run_nli(passage, target_sent)
                        if nli_result:
                            pass
                        else:
                            entail_prec += 1
                    else:
                        entail_prec += 1
            else:
                entail_prec += joint_entail
        ais_scores.append(entail / len(sents))
        ais_scores_prec.append(entail_prec / total_citations if total_citations > 0 else 0)
    return {"citation_rec": 100 * np.mean(ais_scores), "citation_prec": 100 * np.mean(ais_scores_prec)}


def compute_qampari_f1(data, cot=False):
    prec = []
    rec = []
    rec_top5 = []
    f1 = []
    f1_top5 = []
    num_preds = []
    for item in data:
        if cot:
            if ":" in item['output']:
                o = ':'.join(item['output'].split(":")[1:])
            else:
                o = ""
        else:
            o = item['output']
        preds = [normalize_answer(x.strip()) for x in o.rstrip().rstrip(".").rstrip(",").split(",")]
        preds = [p for p in preds if len(p) > 0]
        num_preds.append(len(preds))
        answers = [[normalize_answer(x) for x in ans] for ans in item['answers']]
        flat_answers = [item for sublist in answers for item in sublist]
        prec.append(sum([p in flat_answers for p in preds]) / len(preds) if len(preds) > 0 else 0)
        rec.append(sum([any([x in preds for x in a]) for a in answers]) / len(answers))
        rec_top5.append(min(5, sum([any([x in preds for x in a]) for a in answers])) / min(5, len(answers)))
        if (prec[-1] + rec[-1]) == 0:
            f1.append(0)
        else:
            f1.append(2 * prec[-1] * rec[-1] / (prec[-1] + rec[-1]))
        if (prec[-1] + rec_top5[-1]) == 0:
            f1_top5.append(0)
        else:
            f1_top5.append(2 * prec[-1] * rec_top5[-1] / (prec[-1] + rec_top5[-1]))
    return {
        "num_preds": np.mean(num_preds),
        "qampari_prec": 100 * np.mean(prec),
        "qampari_rec": 100 * np.mean(rec),
        "qampari_rec_top5": 100 * np.mean(rec_top5),
        "qampari_f1": 100 * np.mean(f1),
        "qampari_f1_top5": 100 * np.mean(f1_top5),
    }


def main(data, run_nli, sent_tokenize, at_most_citations=3, claims_nli=False, qampari=False):
    """ALCE's main() after the file is read: first line only, citations removed for all but AutoAIS."""
    data = copy.deepcopy(data)
    for i in range(len(data)):
        data[i]['output'] = data[i]['output'].strip().split("\n")[0]
        data[i]['output'] = data[i]['output'].replace("<|im_end|>", "")
    normalized_data = copy.deepcopy(data)
    for i in range(len(normalized_data)):
        normalized_data[i]['output'] = remove_citations(normalized_data[i]['output'])
    result = {}
    result['length'] = compute_len(normalized_data)
    result['str_em'], result['str_hit'] = compute_str_em(normalized_data)
    if qampari:
        result.update(compute_qampari_f1(normalized_data))
    result.update(compute_autoais(data, run_nli, sent_tokenize, qampari=qampari, at_most_citations=at_most_citations))
    if claims_nli:
        result["claims_nli"] = compute_claims(normalized_data, run_nli)
    return result
